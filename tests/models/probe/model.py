"""A test model that misbehaves on request: crashes, hangs, raises, answers NaN, keeps state, takes bytes,
batches (`upper`), answers raw bytes (`download`), streams (`ticks`) and generates text (`generate`:
it echoes its prompt back three characters at a time, as an LLM that needs no weights).

Used by the serving tests to prove the server's fault handling with a real worker process.
"""

from __future__ import annotations

import ctypes
import math
import os
import signal
import time
from dataclasses import dataclass
from typing import Iterator, Optional

import fastjsonschema
import httptools

# The platform runtime is in every model's environment (no requirement, no resolve).
from ml_runtime.generation import FINISH_LENGTH, FINISH_STOP, ChatMessage, Generated  # pants: no-infer-dep
from ml_runtime.shared_cache import SharedCache  # pants: no-infer-dep

# How many characters of the echo each generated "token" is.
ECHO_TOKEN_CHARS = 3


@dataclass
class Item:
    name: str
    size: int
    tags: Optional[list[str]] = None


@dataclass
class Echo:
    items: list[Item]
    fastjsonschema_version: str
    httptools_version: str


@dataclass
class Remembered:
    made_by: int  # the pid of the worker that made the entry
    answered_by: int  # the pid of the worker that answered this request
    cached: bool  # whether the entry was there (or made while this request waited for it)


@dataclass
class Word:
    text: str
    delay: float = 0.0  # seconds the model call takes (the longest of its batch, at most 1)


@dataclass
class Tick:
    n: int
    pid: int  # the worker that made it


@dataclass
class Shouted:
    text: str
    batch_size: int  # how many requests the model call that answered this one answered
    pid: int


class Model:
    batched_endpoints = {"upper": {"max_batch_size": 8, "max_wait_ms": 50}}
    endpoint_examples = {"predict": {"items": [{"name": "a", "size": 1, "tags": ["x"]}]}}

    def load(self) -> None:
        self.calls = 0
        self.cache = SharedCache.from_env()

    def remember(self, key: str, delay: float = 0.0) -> Remembered:
        """The entry `key` of the server's shared cache, made on the first request for it by one
        worker (taking `delay` seconds, at most 1); every worker answers the later ones."""
        def make() -> bytes:
            time.sleep(min(1.0, max(0.0, delay)))
            return str(os.getpid()).encode()

        data, cached = self.cache.get_or_create(key, make)
        return Remembered(int(data), os.getpid(), cached)

    def predict(self, items: list[Item]) -> Echo:
        """Echo the items, with the versions of the model's own dependencies."""
        self.calls += 1
        return Echo(items, fastjsonschema.VERSION, httptools.__version__)

    def count(self) -> int:
        """How many predictions this worker has served (state kept between requests)."""
        return self.calls

    def pid(self) -> int:
        return os.getpid()

    def sleep(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    def fail(self, message: str) -> None:
        raise RuntimeError(f"model failure: {message}")

    def exit(self, code: int = 3) -> None:
        os._exit(code)

    def segfault(self) -> None:
        ctypes.string_at(0)

    def kill(self) -> None:
        # What the kernel's OOM killer does.
        os.kill(os.getpid(), signal.SIGKILL)

    def nan(self) -> dict[str, float]:
        """A result JSON cannot carry."""
        return {"ok": 1.0, "bad": math.nan}

    def refuse(self, reason: str) -> None:
        """Reject the input the way a model may: with ValueError."""
        raise ValueError(reason)

    def upload(self, data: bytes) -> dict[str, int]:
        return {"length": len(data), "first": data[0] if data else -1}

    def ticks(self, to: int, delay: float = 0.0, fail_at: int = -1) -> Iterator[Tick]:
        """Streams ticks 0 .. to-1 (at most 1000), `delay` seconds apart (at most 1); refuses
        to go on at tick `fail_at` (a 422 as the stream's last event)."""
        for n in range(max(0, min(to, 1000))):
            if n == fail_at:
                raise ValueError(f"fail_at: refusing tick {n}")
            if n:
                time.sleep(min(1.0, max(0.0, delay)))
            yield Tick(n, os.getpid())

    def download(self, size: int) -> bytes:
        """`size` bytes counting up from 0 (mod 256), sent as they are (application/octet-stream)."""
        return bytes(i % 256 for i in range(max(0, min(size, 2**20))))

    def upper(self, requests: list[Word]) -> list[Shouted]:
        """Upper-case each word, saying how large a batch answered it. "refuse" is refused
        (ValueError) and "crash" fails the call: the other requests of its batch still get their
        answers."""
        time.sleep(min(1.0, max(0.0, *(r.delay for r in requests))))
        for r in requests:
            if r.text == "refuse":
                raise ValueError("refused: refuse")
            if r.text == "crash":
                raise RuntimeError("model failure in a batch")
        return [Shouted(r.text.upper(), len(requests), os.getpid()) for r in requests]

    def environment(self, name: str) -> Optional[str]:
        """One variable of the worker's environment (what the server gave it)."""
        return os.environ.get(name)

    def generate(self, prompt: str = "", messages: Optional[list[ChatMessage]] = None, max_tokens: int = 256,
                 temperature: float = 1.0, top_p: float = 1.0, seed: Optional[int] = None,
                 delay: float = 0.0) -> Iterator[Generated]:
        """Echoes `prompt` (or the messages' contents, as "role: content" lines) back,
        ECHO_TOKEN_CHARS characters per token, `delay` seconds apart (at most 1); at "FAIL" it
        raises (a 422 as the stream's last event)."""
        text = prompt or "\n".join(f"{m.role}: {m.content}" for m in messages or [])
        tokens = [text[i:i + ECHO_TOKEN_CHARS] for i in range(0, len(text), ECHO_TOKEN_CHARS)]
        prompt_tokens = len(tokens)
        for n, token in enumerate(tokens[:max_tokens], start=1):
            if n > 1:
                time.sleep(min(1.0, max(0.0, delay)))
            if "FAIL" in text and text.index("FAIL") < n * ECHO_TOKEN_CHARS:
                raise ValueError("FAIL: the prompt asked the generation to fail here")
            last = n == min(len(tokens), max_tokens)
            yield Generated(token, prompt_tokens, n, (FINISH_LENGTH if n < len(tokens) else FINISH_STOP) if last else None)

    def shout(self, text: str) -> str:
        print("model output on stdout must not break the protocol")
        return text.upper()
