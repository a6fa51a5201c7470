#!/usr/bin/env python3
"""The streamed LLM's figures, side by side in one run: smollm2 (SmolLM2-135M-Instruct on the CPU,
one worker, one thread) deployed on the local default behind the gateway, against the same
`generate` called in process (the floor: the model's own decode loop, no server).

  ttft        time to the first token: in process, vs an SSE chat completion through the
              gateway and the server (what a user waits for); from short answers (8 tokens,
              three times as many runs, back to back) and from the long ones
  tokens/s    completion tokens over the whole answer, the same greedy answer both ways
  chain       the same ticket through support_reply -> gateway -> smollm2 (non-streamed) vs the
              same messages sent to smollm2 through the gateway: what the extra hop costs
              (2-token answers, four times as many runs: the hop, not the generation)

The runs alternate (floor, server, floor, ...) so that a noisy machine hurts both alike; medians.
No peer server is measured: llama-cpp-python, the one installable here, compiles from source for
~26 minutes (see ../shared/ENVIRONMENT.md).

Usage: ./pants run bench/llm.py -- [--no-build] [--runs N] [--max-tokens N]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ml_deploy import local
from ml_deploy.config import Environment
from ml_deploy.plan import execute
from ml_deploy.release import Release
from serving import log, package_model
from testutil import scratch
from testutil.net import free_port

REPO = scratch.repo_root()
SMOLLM2 = REPO / "dist" / "models.smollm2" / "smollm2"
SUPPORT_REPLY = REPO / "dist" / "models.support_reply" / "support_reply"
GATEWAY_PEX = REPO / "dist" / "gateway.pex"
QUESTION = [{"role": "user", "content": "Explain in a few sentences why the sky is blue."}]
TICKET = {"subject": "Refund", "message": "I was charged twice for order 123. Can I get one charge back?"}
KEY = "bench-key"
CHAIN_TOKENS = 2
TTFT_TOKENS = 8

# The floor: the packaged model's own environment, its `generate` called directly. One line of
# JSON in (the request), one out (first-token and total seconds, tokens), until stdin closes.
FLOOR_CODE = r"""
import json, sys, time
from model import Model
from ml_runtime.generation import ChatMessage
model = Model(); model.load()
print("ready", flush=True)
for line in sys.stdin:
    request = json.loads(line)
    started = time.perf_counter(); first = None; text = ""; tokens = 0
    for piece in model.generate(messages=[ChatMessage(**m) for m in request["messages"]],
                                max_tokens=request["max_tokens"], temperature=0):
        if piece.text and first is None:
            first = time.perf_counter() - started
        text += piece.text; tokens = piece.completion_tokens
    print(json.dumps({"ttft": first, "total": time.perf_counter() - started, "tokens": tokens, "text": text}), flush=True)
"""


class Floor:
    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [str(SMOLLM2 / "model.pex" / "__main__.py"), "-c", FLOOR_CODE],
            env={**os.environ, "PEX_INTERPRETER": "1", "OMP_NUM_THREADS": "1"},
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.process.stdout is not None
        while self.process.stdout.readline().strip() != "ready":
            if self.process.poll() is not None:
                sys.exit("the in-process floor failed to load the model")

    def run(self, max_tokens: int) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps({"messages": QUESTION, "max_tokens": max_tokens}) + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def stop(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        self.process.wait(timeout=30)


def streamed(port: int, max_tokens: int) -> dict[str, Any]:
    """An SSE chat completion through the gateway, timed as a client reads it."""
    body = json.dumps({"model": "smollm2", "messages": QUESTION, "max_tokens": max_tokens, "temperature": 0,
                       "stream": True, "stream_options": {"include_usage": True}})
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    started = time.perf_counter()
    connection.request("POST", "/v1/openai/v1/chat/completions", body=body,
                       headers={"host": f"smollm2.ml.localhost:{port}", "content-type": "application/json"})
    response = connection.getresponse()
    first, text, tokens = None, "", 0
    for line in response:
        if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
        for choice in chunk["choices"]:
            if choice["delta"].get("content"):
                first = first if first is not None else time.perf_counter() - started
                text += choice["delta"]["content"]
    total = time.perf_counter() - started
    connection.close()
    return {"ttft": first, "total": total, "tokens": tokens, "text": text}


def post(port: int, model: str, path: str, body: dict) -> tuple[float, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    started = time.perf_counter()
    connection.request("POST", path, body=json.dumps(body),
                       headers={"host": f"{model.replace('_', '-')}.ml.localhost:{port}", "content-type": "application/json"})
    response = connection.getresponse()
    answer = json.loads(response.read())
    elapsed = time.perf_counter() - started
    connection.close()
    if response.status != 200:
        sys.exit(f"{model} {path} answered {response.status}: {answer}")
    return elapsed, answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-build", action="store_true", help="Use the packages already in dist/.")
    parser.add_argument("--runs", type=int, default=5, help="Runs of each measurement (default 5).")
    parser.add_argument("--max-tokens", type=int, default=64, help="Tokens per answer (default 64).")
    args = parser.parse_args()
    package_model("models/smollm2:smollm2", SMOLLM2, args.no_build)
    package_model("models/support_reply:support_reply", SUPPORT_REPLY, args.no_build)
    if not args.no_build:
        subprocess.run(["./pants", "--no-dynamic-ui", "package", "platform:gateway"], cwd=REPO, check=True,
                       capture_output=True, env={**os.environ, "PANTS_CONCURRENT": "true"})
    if not GATEWAY_PEX.exists():
        sys.exit(f"error: {GATEWAY_PEX} is missing; run ./pants package platform:gateway (or drop --no-build)")
    os.environ["BENCH_SUPPORT_REPLY_KEY"] = KEY
    with tempfile.TemporaryDirectory(prefix="bench-llm-") as tmp:
        environment = Environment(name="bench-llm", compute="local", gateway_port=free_port(),
                                  state_dir=str(Path(tmp) / "state"), engine="process",
                                  secrets={"SUPPORT_REPLY_API_KEY": "env:BENCH_SUPPORT_REPLY_KEY"})
        port = environment.gateway_port
        floor = None
        try:
            for name, package, settings in (
                    ("smollm2", SMOLLM2, {"cpu": 1, "memory": 2048, "workers": 1, "timeout": 300}),
                    ("support_reply", SUPPORT_REPLY, {"memory": 512, "timeout": 45,
                                                      "secrets": ["SUPPORT_REPLY_API_KEY"]})):
                log(f"deploying {name} locally ...")
                release = Release.from_spec({"name": name, "version": 1, **settings}, package)
                execute(local.plan(release, environment, GATEWAY_PEX), say=lambda _: None)
            log("loading the in-process floor ...")
            floor = Floor()
            rows = measure(floor, port, args.runs, args.max_tokens)
        finally:
            if floor is not None:
                floor.stop()
            local.stop(environment, say=lambda _: None)
    report(rows, args.max_tokens)


def measure(floor: Floor, port: int, runs: int, max_tokens: int) -> dict[str, list]:
    rows: dict[str, list] = {k: [] for k in ("floor", "server", "direct", "chain", "floor_short", "server_short")}
    system = (REPO / "models" / "support_reply" / "src" / "prompt.txt").read_text().format(product="our product")
    ticket_messages = [{"role": "system", "content": system},
                       {"role": "user", "content": f"Subject: {TICKET['subject']}\n\n{TICKET['message']}"}]
    streamed(port, 4)  # warm both paths once
    floor.run(4)
    for i in range(3 * runs):
        rows["floor_short"].append(floor.run(TTFT_TOKENS)["ttft"])
        rows["server_short"].append(streamed(port, TTFT_TOKENS)["ttft"])
    for i in range(runs):
        log(f"run {i + 1}/{runs}")
        rows["floor"].append(floor.run(max_tokens))
        rows["server"].append(streamed(port, max_tokens))
        for _ in range(4):
            rows["direct"].append(post(port, "smollm2", "/v1/openai/v1/chat/completions",
                                       {"model": "smollm2", "messages": ticket_messages, "max_tokens": CHAIN_TOKENS,
                                        "temperature": 0})[0])
            rows["chain"].append(post(port, "support_reply", "/v1/reply", {**TICKET, "max_tokens": CHAIN_TOKENS})[0])
    same = {r["text"] for r in rows["floor"]} == {r["text"] for r in rows["server"]}
    if not same:
        log("warning: the server's greedy answer differs from the floor's")
    return rows


def report(rows: dict[str, list], max_tokens: int) -> None:
    def median(values: list) -> float:
        return statistics.median(values)

    floor_ttft = median([r["ttft"] for r in rows["floor"]])
    server_ttft = median([r["ttft"] for r in rows["server"]])
    floor_rate = median([r["tokens"] / r["total"] for r in rows["floor"]])
    server_rate = median([r["tokens"] / r["total"] for r in rows["server"]])
    direct, chain = median(rows["direct"]), median(rows["chain"])
    print(f"\nsmollm2, {max_tokens} tokens at most, greedy, {len(rows['floor'])} runs (medians):")
    print(f"{'':28}{'in process':>12}{'via gateway':>13}{'ratio':>8}")
    short_floor, short_server = median(rows["floor_short"]), median(rows["server_short"])
    print(f"{'time to first token (ms)':28}{short_floor * 1e3:>12.1f}{short_server * 1e3:>13.1f}"
          f"{short_server / short_floor:>8.2f}   ({TTFT_TOKENS}-token answers, {len(rows['floor_short'])} runs)")
    print(f"{'  ... of the long answers':28}{floor_ttft * 1e3:>12.1f}{server_ttft * 1e3:>13.1f}{server_ttft / floor_ttft:>8.2f}")
    print(f"{'tokens/s':28}{floor_rate:>12.1f}{server_rate:>13.1f}{server_rate / floor_rate:>8.3f}")
    print(f"TTFT overhead: {(short_server - short_floor) * 1e3:+.1f} ms ({(server_ttft - floor_ttft) * 1e3:+.1f} ms "
          f"in the long answers); streaming throughput {server_rate / floor_rate:.1%} of the floor")
    print(f"\nthe same ticket, {CHAIN_TOKENS}-token answers: smollm2 direct {direct * 1e3:.0f} ms, support_reply -> gateway -> smollm2 "
          f"{chain * 1e3:.0f} ms: the chain adds {(chain - direct) * 1e3:+.1f} ms ({chain / direct:.3f}x)")


if __name__ == "__main__":
    main()
