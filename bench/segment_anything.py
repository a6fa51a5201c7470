#!/usr/bin/env python3
"""Segment-Anything's two-stage serving figures, side by side in one run, all through the HTTP
server of the packaged model (dist/models.segment_anything/segment_anything, from `./pants
package models/segment_anything:`) on 127.0.0.1:

  prompt       a click on a cached embedding (`segment` by `embedding_id`) vs the same click
               on an image the server has not seen (`segment` with `image`: embed + prompt),
               with the small encoder the model ships and with the real vit_b architecture
               (random weights from weights.py: timing needs no trained ones)
  clicks/s     one worker, warm cache, clients keeping it busy
  bytes/image  what one embedding costs the shared cache
  hit rate     two workers, 20 images x 10 clicks each, the sessions interleaved
  stateless    a click carrying the embedding itself (base64 in JSON) vs by id: payload bytes
               and the latency added

Every image is a new PNG (a rectangle somewhere on a noisy ground), so that "not seen" is true.

Usage: ./pants run bench/segment_anything.py -- [--no-build] [--clicks N] [--uncached N] [--no-vit-b]
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import http.client
import json
import os
import random
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Any, Optional

from serving import package_model
from testutil import scratch

REPO = scratch.repo_root()
DIST = REPO / "dist" / "models.segment_anything" / "segment_anything"
MODEL = DIST / "model.pex" / "__main__.py"
WIDTH, HEIGHT = 640, 480
MiB = 2**20


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def png(seed: int) -> bytes:
    """A WIDTH x HEIGHT RGB PNG: noise, and a bright rectangle placed by `seed`."""
    rng = random.Random(seed)
    x0, y0 = rng.randrange(0, WIDTH - 200), rng.randrange(0, HEIGHT - 150)
    rows = []
    for y in range(HEIGHT):
        row = bytearray(rng.randbytes(WIDTH * 3))
        if y0 <= y < y0 + 150:
            row[x0 * 3:(x0 + 200) * 3] = b"\xf0\xd0\x20" * 200
        rows.append(b"\0" + bytes(row))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", WIDTH, HEIGHT, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"".join(rows), 1))
            + chunk(b"IEND", b""))


class Served:
    """The packaged model's server on a free port, stopped (SIGTERM, by pid) on exit."""

    def __init__(self, tmp: Path, name: str, *args: str, env: Optional[dict[str, str]] = None) -> None:
        self.ready_file = tmp / f"{name}.url"
        self.log_path = tmp / f"{name}.log"
        with self.log_path.open("wb") as out:
            self.process = subprocess.Popen(
                [str(MODEL), "serve", "--port", "0", "--ready-file", str(self.ready_file), *args],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})}, start_new_session=True)
        deadline = time.monotonic() + 600
        while not self.ready_file.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{name} did not start:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.05)
        host, port = self.ready_file.read_text().removeprefix("http://").split(":")
        self.address = (host, int(port))
        self.local = threading.local()

    def connection(self) -> http.client.HTTPConnection:
        """This thread's kept-alive connection."""
        if getattr(self.local, "connection", None) is None:
            self.local.connection = http.client.HTTPConnection(*self.address, timeout=600)
        return self.local.connection

    def call(self, path: str, body: bytes, content_type: str = "application/json") -> tuple[Any, float]:
        """The answer and the seconds it took."""
        connection = self.connection()
        started = time.perf_counter()
        connection.request("POST" if body else "GET", path, body=body or None, headers={"content-type": content_type})
        response = connection.getresponse()
        data = response.read()
        elapsed = time.perf_counter() - started
        if response.status != 200:
            raise RuntimeError(f"{path}: {response.status} {data[:500]!r}")
        kind = response.getheader("content-type", "")
        return (json.loads(data) if kind.startswith("application/json") else data), elapsed

    def metric(self, name: str) -> float:
        text, _ = self.call("/metrics", b"")
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.decode().splitlines() if line.startswith(name + "{"))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def click(embedding_id: str, i: int) -> bytes:
    return json.dumps({"embedding_id": embedding_id, "multimask": False,
                       "points": [{"x": 100 + (37 * i) % (WIDTH - 200), "y": 80 + (23 * i) % (HEIGHT - 160)}]}).encode()


def prompt_latency(served: Served, clicks: int, uncached: int, seed: int) -> dict[str, float]:
    """Median seconds of a click by id on a cached embedding, and of the same click sent with an
    image the server has not seen (embed + prompt)."""
    cold = []
    for n in range(uncached):
        image = png(seed + n)
        body = json.dumps({"image": base64.b64encode(image).decode(), "multimask": False,
                           "points": [{"x": 120, "y": 100}]}).encode()
        answer, seconds = served.call("/v1/segment", body)
        cold.append(seconds)
    served.call("/v1/segment", click(answer["embedding_id"], 0))  # warm the prompt path
    warm = [served.call("/v1/segment", click(answer["embedding_id"], i))[1] for i in range(clicks)]
    return {"cached": statistics.median(warm), "uncached": statistics.median(cold)}


def clicks_per_second(served: Served, embedding_id: str, seconds: float, clients: int) -> float:
    stop = time.monotonic() + seconds
    counts = [0] * clients

    def client(index: int) -> None:
        i = 0
        while time.monotonic() < stop:
            served.call("/v1/segment", click(embedding_id, i))
            counts[index] += 1
            i += 1

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return sum(counts) / (time.perf_counter() - started)


def sessions(served: Served, images: int, clicks: int, clients: int, seed: int) -> dict[str, float]:
    """Interleaved sessions: each embeds its image once, then clicks; every step of every
    session in one shuffled queue, each session's steps in order."""
    pictures = {s: png(seed + s) for s in range(images)}
    ids: dict[int, str] = {}
    ready = {s: threading.Event() for s in range(images)}
    steps = [(s, -1) for s in range(images)] + [(s, c) for s in range(images) for c in range(clicks)]
    random.Random(seed).shuffle(steps)
    steps.sort(key=lambda step: step[1] >= 0)  # embeds start first; clicks wait for theirs anyway
    hits, misses = served.metric("ml_shared_cache_hits_total"), served.metric("ml_shared_cache_misses_total")

    def run(step: tuple[int, int]) -> None:
        session, n = step
        if n < 0:
            answer, _ = served.call("/v1/embed", pictures[session], "image/png")
            ids[session] = answer["embedding_id"]
            ready[session].set()
        else:
            ready[session].wait()
            served.call("/v1/segment", click(ids[session], n))

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(run, steps))
    return {"hits": served.metric("ml_shared_cache_hits_total") - hits,
            "misses": served.metric("ml_shared_cache_misses_total") - misses}


def vit_b_checkpoint(tmp: Path) -> Path:
    """Random vit_b weights, written by the model's own weights.py in its own environment."""
    code = "import sys, weights; sys.exit(weights.main(['weights.py', sys.argv[1], 'vit_b']))"
    run = subprocess.run([str(MODEL), "-c", code, str(tmp)], env={**os.environ, "PEX_INTERPRETER": "1"},
                         capture_output=True, text=True, timeout=900)
    if run.returncode != 0:
        raise RuntimeError(f"writing vit_b weights failed:\n{run.stderr[-3000:]}")
    (path,) = tmp.glob("artifacts/segment_anything/sam_vit_b.pth")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-build", action="store_true", help="Use the package already in dist/.")
    parser.add_argument("--clicks", type=int, default=30, help="Cached clicks timed per encoder.")
    parser.add_argument("--uncached", type=int, default=5, help="Embed + prompt requests timed (small; vit_b: 3).")
    parser.add_argument("--seconds", type=float, default=10.0, help="Seconds of the clicks/s load.")
    parser.add_argument("--no-vit-b", action="store_true", help="Skip the vit_b architecture (it embeds slowly).")
    args = parser.parse_args()
    package_model("models/segment_anything:", DIST, args.no_build)
    tmp = Path(tempfile.mkdtemp(prefix="bench-sam-"))
    rows: dict[str, Any] = {}
    servers: list[Served] = []
    try:
        log("small encoder, one worker ...")
        small = Served(tmp, "small", "--workers", "1", "--threads", "2")
        servers.append(small)
        rows["small"] = prompt_latency(small, args.clicks, args.uncached, seed=1000)
        before = small.metric("ml_shared_cache_bytes")
        entries = small.metric("ml_shared_cache_entries")
        embedded, _ = small.call("/v1/embed", png(5000), "image/png")
        rows["bytes_per_image"] = small.metric("ml_shared_cache_bytes") - before
        assert small.metric("ml_shared_cache_entries") == entries + 1
        rows["clicks_per_s"] = clicks_per_second(small, embedded["embedding_id"], args.seconds, clients=2)
        blob, _ = small.call("/v1/embedding", png(5000), "image/png")
        stateless = json.dumps({"embedding": base64.b64encode(blob).decode(), "multimask": False,
                                "points": [{"x": 120, "y": 100}]}).encode()
        by_id = click(embedded["embedding_id"], 0)
        small.call("/v1/segment", stateless)
        rows["stateless"] = {
            "payload": len(stateless), "payload_by_id": len(by_id),
            "latency": statistics.median(small.call("/v1/segment", stateless)[1] for _ in range(args.clicks)),
            "latency_by_id": statistics.median(small.call("/v1/segment", by_id)[1] for _ in range(args.clicks)),
        }
        small.stop()

        log("small encoder, two workers, 20 images x 10 clicks ...")
        pair = Served(tmp, "pair", "--workers", "2", "--threads", "1")
        servers.append(pair)
        rows["sessions"] = sessions(pair, images=20, clicks=10, clients=4, seed=2000)
        pair.stop()

        if not args.no_vit_b:
            log("vit_b: random weights ...")
            checkpoint = vit_b_checkpoint(tmp)
            vit_b = Served(tmp, "vit_b", "--workers", "1", "--threads", "2",
                           env={"SAM_ARCH": "vit_b", "SAM_CHECKPOINT": str(checkpoint)})
            servers.append(vit_b)
            rows["vit_b"] = prompt_latency(vit_b, args.clicks, min(3, args.uncached), seed=3000)
            vit_b.stop()
    finally:
        for served in servers:
            served.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    report(rows)


def report(rows: dict[str, Any]) -> None:
    print(f"\nSegment-Anything through the HTTP server, {WIDTH}x{HEIGHT} PNGs, {os.cpu_count()} CPU cores")
    print(f"{'encoder':<8} {'cached click':>14} {'embed + click':>15} {'ratio':>9}")
    for name in ("small", "vit_b"):
        if name in rows:
            r = rows[name]
            print(f"{name:<8} {r['cached'] * 1000:>11.1f} ms {r['uncached'] * 1000:>12.1f} ms "
                  f"{r['uncached'] / r['cached']:>8.1f}x")
    print(f"clicks/s, one worker, warm cache (small): {rows['clicks_per_s']:.1f}")
    print(f"cache bytes per image: {rows['bytes_per_image']:,.0f} ({rows['bytes_per_image'] / MiB:.4f} MiB)")
    s = rows["sessions"]
    clicks = s["hits"]
    print(f"2 workers, 20 images x 10 clicks: {s['misses']:.0f} misses (embeddings made), {s['hits']:.0f} hits; "
          f"clicks answered from the cache: {clicks:.0f} of 200 ({clicks / 200:.0%})")
    st = rows["stateless"]
    print(f"stateless click: {st['payload']:,} bytes (by id: {st['payload_by_id']:,}); "
          f"{st['latency'] * 1000:.1f} ms vs {st['latency_by_id'] * 1000:.1f} ms by id "
          f"(+{(st['latency'] - st['latency_by_id']) * 1000:.1f} ms)")


if __name__ == "__main__":
    main()
