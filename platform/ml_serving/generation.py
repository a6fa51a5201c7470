"""Text generation over a model's `generate` endpoint (the contract: ml_runtime.generation): one
request's text as it is decoded, cut at its stop strings, with its usage counts. The
OpenAI-compatible routes (ml_serving.openai_api) and the Open Inference Protocol generate
extension (ml_serving.oip) are two wire formats over this one loop.

Stop strings are the server's job, not each model's: text that could be the start of a stop
string is held back until it is known not to be one, and when one appears the text before it is
the last piece and the model's generator is closed (its worker stops generating at once).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, Optional, Sequence, Union

from ml_http.server import Response
from ml_runtime.generation import FINISH_STOP, GENERATE_ENDPOINT, GENERATE_PARAMETERS
from ml_serving.workers import Stream, WorkerLost, WorkerResponse, WorkerTimeout

if TYPE_CHECKING:
    from ml_serving.app import ModelApp


def supported(description: Optional[dict[str, Any]]) -> bool:
    """Whether the model generates text: a streaming `generate` taking every parameter the
    server fills."""
    spec = (description or {}).get("endpoints", {}).get(GENERATE_ENDPOINT)
    if not spec or not spec.get("streaming"):
        return False
    return set(GENERATE_PARAMETERS) <= set(spec["request"].get("properties", {}))


def model_parameters(app: "ModelApp", fields: dict[str, Any]) -> dict[str, Any]:
    """The fields of a request that are parameters of the model's own `generate` beyond the
    contract's (e.g. what an OpenAI client sends as `extra_body`): passed on as they are."""
    accepted = app.endpoints[GENERATE_ENDPOINT]["request"].get("properties", {})
    return {k: v for k, v in fields.items() if k in accepted and k not in GENERATE_PARAMETERS}


class GenerationFailed(Exception):
    """The generation ended in an error after its first piece; `response` says which."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_json(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.total_tokens}


class Generation:
    """One generation: `await start()` (None, or the error response when it failed before any
    text: a bad request, a full queue), then `async for piece in pieces()`; afterwards `usage`
    and `finish_reason`."""

    def __init__(self, app: "ModelApp", payload: dict[str, Any], stop: Union[str, Sequence[str], None],
                 request_id: str, timeout: Optional[float]) -> None:
        self.app = app
        self.payload = {k: v for k, v in payload.items() if v is not None}
        # One stop string or several, as OpenAI's `stop` and the generate extension's take them.
        self.stop = tuple(s for s in ([stop] if isinstance(stop, str) else stop or ()) if s)
        self.request_id = request_id
        self.timeout = timeout
        self.usage = Usage()
        self.finish_reason = FINISH_STOP
        self._stream: Optional[Stream] = None
        self._first: Union[bytes, WorkerResponse, None] = None

    async def start(self) -> Optional[Response]:
        error = self.app.validate(GENERATE_ENDPOINT, self.payload)
        if error is not None:
            return Response.json(422, {**error, "request_id": self.request_id})
        opened = await self.app.open_stream(GENERATE_ENDPOINT, json.dumps(self.payload).encode(), self.request_id,
                                            timeout=self.timeout)
        if isinstance(opened, Response):
            return opened
        self._stream, self._first = opened
        return None

    async def pieces(self) -> AsyncIterator[str]:
        """The text as it comes, never empty pieces; raises GenerationFailed."""
        text, sent = "", 0
        event = self._first
        finished = False
        try:
            while isinstance(event, bytes):
                item = json.loads(event)
                text += item.get("text") or ""
                self.usage = Usage(int(item.get("prompt_tokens") or 0), int(item.get("completion_tokens") or 0))
                self.finish_reason = item.get("finish_reason") or self.finish_reason
                cut = _first_stop(text, sent, self.stop)
                if cut is not None:
                    self.finish_reason = FINISH_STOP
                    if cut > sent:
                        yield text[sent:cut]
                    return  # `finally` closes the model's generator
                end = len(text) - _held_back(text, self.stop)
                if end > sent:
                    yield text[sent:end]
                    sent = end
                event = await self._stream.next()
            finished = True
            if event is not None and event.status != 200:
                raise GenerationFailed(self.app.answer("", event, self.request_id))
            if len(text) > sent:
                yield text[sent:]
        except (WorkerTimeout, WorkerLost) as e:
            finished = True
            raise GenerationFailed(self.app.pool_error(e, self.request_id)) from None
        finally:
            if not finished:  # a stop string, a client that went away, a server stopping
                self._stream.cancel()

    async def text(self) -> str:
        """The whole text (a request that does not stream)."""
        return "".join([piece async for piece in self.pieces()])


def _first_stop(text: str, start: int, stops: tuple[str, ...]) -> Optional[int]:
    """Where the earliest stop string begins in text[start:] (nothing before `start` can begin
    one: it was held back while it could), or None."""
    found = [i for i in (text.find(s, start) for s in stops) if i >= 0]
    return min(found) if found else None


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many characters at the end of `text` could be the start of a stop string."""
    held = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), held, -1):
            if text.endswith(stop[:k]):
                held = k
                break
    return held
