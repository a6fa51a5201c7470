#!/usr/bin/env python3
"""Adaptive batching figures for doc_links, side by side in one run.

The same packaged doc_links (dist/models.doc_links/doc_links, from `./pants package
models/doc_links:`) is served twice, one worker each: with batching (its declared 32 requests /
5 ms) and with --no-batching. The same load generator as bench/serving.py (wrk, POST body from a
Lua script) measures each at concurrency 32 and at concurrency 1, rounds interleaved; the table
shows medians over rounds, the ratios are medians of per-round ratios.

The floors, in process (the packaged model's own environment, no server): the raw batched
encode of 32 questions (questions/s: the most batching can reach) and one single-question call
(what concurrency 1 costs before the server's share and the batch wait).

Usage: ./pants run bench/batching.py -- [--rounds N] [--duration S] [--no-build]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
from collections import defaultdict
from pathlib import Path

from serving import REPO, Server, package_model, WrkResult, ensure_wrk, log, run_wrk, wrk_script
from testutil.net import free_port

DIST = REPO / "dist" / "models.doc_links" / "doc_links"
QUESTION = "How can I go back to the previous version after a bad release?"
ANSWER = "https://docs.ml.example.com/deploy/rollback"
BODY = json.dumps({"question": QUESTION, "k": 3}, separators=(",", ":"))
MAX_WAIT_MS = 5.0  # doc_links' declared max_wait_ms

FLOOR_CODE = r"""
import json, statistics, sys, time
import model
from model import Question

m = model.Model()
m.load()
question = sys.argv[1]
batch = [Question(question) for _ in range(32)]
m.predict(batch)  # warm
rounds = []
for _ in range(int(sys.argv[2])):
    start = time.perf_counter()
    m.predict(batch)
    rounds.append(time.perf_counter() - start)
singles = []
for _ in range(int(sys.argv[2]) * 4):
    start = time.perf_counter()
    m.predict([Question(question)])
    singles.append(time.perf_counter() - start)
print(json.dumps({"batch32_per_s": 32 / statistics.median(rounds), "single_ms": 1000 * statistics.median(singles)}))
"""


def label(answer: object) -> str:
    return answer[0]["url"]  # type: ignore[index]


def floor(calls: int) -> dict[str, float]:
    result = subprocess.run(
        [str(DIST / "model.pex" / "__main__.py"), "-c", FLOOR_CODE, QUESTION, str(calls)],
        env={**os.environ, "PEX_INTERPRETER": "1", "OMP_NUM_THREADS": "1"},
        capture_output=True, text=True, timeout=600,
    )
    if result.returncode != 0:
        raise RuntimeError(f"floor measurement failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def server(name: str, tmp: Path, *extra: str) -> Server:
    port = free_port()
    return Server(name, [str(DIST / "model.pex" / "__main__.py"), "serve", "--port", str(port),
                         "--workers", "1", "--threads", "1", *extra],
                  f"http://127.0.0.1:{port}/v1/predict", BODY, label, REPO, tmp, expected=ANSWER)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0, help="Seconds of load per measurement.")
    parser.add_argument("--no-build", action="store_true", help="Use the doc_links package already in dist/.")
    args = parser.parse_args()
    wrk = ensure_wrk()
    package_model("models/doc_links:", DIST, args.no_build)
    log("floor: the model in process ...")
    floors = floor(20)
    tmp = Path(tempfile.mkdtemp(prefix="ml-batching-bench-"))
    servers = [server("batched", tmp), server("unbatched", tmp, "--no-batching")]
    script = wrk_script(tmp, "doc_links", BODY)
    results: dict[tuple[str, int], list[WrkResult]] = defaultdict(list)
    try:
        for s in servers:
            s.start()
        for s in servers:
            s.wait_ready()
        for round_no in range(1, args.rounds + 1):
            for threads, connections in ((2, 32), (1, 1)):
                for s in servers:
                    log(f"round {round_no}/{args.rounds}: {s.name} c={connections} ...")
                    run_wrk(wrk, s, script, threads, connections, 2.0)  # warm
                    results[(s.name, connections)].append(run_wrk(wrk, s, script, threads, connections,
                                                                  args.duration))
    finally:
        for s in servers:
            s.stop()

    def med(name: str, c: int, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in results[(name, c)])

    speedup = statistics.median(b.rps / u.rps for b, u in zip(results[("batched", 32)], results[("unbatched", 32)]))
    to_floor = med("batched", 32, "rps") / floors["batch32_per_s"]
    print(f"doc_links, one worker, one thread; {args.rounds} rounds of {args.duration:g} s; medians")
    print(f"{'':<12}{'c=32 req/s':>12}{'p50 ms':>9}{'p99 ms':>9}{'c=1 p50 ms':>12}{'errors':>8}")
    for name in ("batched", "unbatched"):
        errors = sum(r.non_2xx + r.socket_errors for c in (1, 32) for r in results[(name, c)])
        print(f"{name:<12}{med(name, 32, 'rps'):>12.1f}{med(name, 32, 'p50_ms'):>9.1f}{med(name, 32, 'p99_ms'):>9.1f}"
              f"{med(name, 1, 'p50_ms'):>12.2f}{errors:>8}")
    print(f"floor: batched encode of 32 in process {floors['batch32_per_s']:.1f} questions/s; "
          f"one question {floors['single_ms']:.2f} ms")
    print(f"batched vs unbatched at c=32: {speedup:.2f}x (target >= 3x)")
    print(f"batched c=32 vs the in-process floor: {to_floor:.2f} (target >= {1 / 1.5:.2f}, within 1.5x)")
    budget = floors["single_ms"] + MAX_WAIT_MS
    print(f"batched c=1 p50 {med('batched', 1, 'p50_ms'):.2f} ms vs single call + max wait {budget:.2f} ms "
          f"(target: within 1 ms)")


if __name__ == "__main__":
    main()
