#!/usr/bin/env python3
"""The shared build cache's figures, measured side by side in one run.

Two scratch clones of the current commit at different paths, each with an empty Pants store and
execution root of its own, share one BuildGrid on 127.0.0.1 (infra/remote_cache:serve, empty at
the start):

  cold   the first clone builds everything and writes the cache (ML_REMOTE_CACHE_WRITE=true)
  warm   the second clone, as a new CI runner or developer would, reads it

For `package models/::` (every model, the PyTorch ones included) and, with --suite, for
`test ::` (or the specs given): wall time, warm/cold, what the reader's empty store took in (its bytes on disk afterwards: what it downloaded, plus what it built itself), and the
cache's size on disk afterwards. Pants' named caches (downloaded wheels, never part of a cache
key) are this machine's, unless --cold-downloads gives each clone empty ones (then the cold
build downloads every wheel again).

Usage: ./pants run bench/remote_cache.py -- [--suite [SPEC ...]] [--cold-downloads]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

from testutil.remote_cache import SERVE_PEX, pants_counters, remote_cache
from testutil.scratch import clone as scratch_clone, own_caches, repo_root

SERVE = "infra/remote_cache:serve"


def clone_env(root: Path, cache: str, write: bool, cold_downloads: bool) -> Dict[str, str]:
    env = own_caches(root)
    if not cold_downloads:
        env.pop("PANTS_NAMED_CACHES_DIR")
    return {**env, "ML_REMOTE_CACHE": cache, "ML_REMOTE_CACHE_WRITE": "true" if write else "false"}


def disk_bytes(folder: Path) -> int:
    """Bytes on disk under `folder` (allocated blocks: Pants' LMDB files are sparse)."""
    return sum(p.stat().st_blocks * 512 for p in folder.rglob("*") if p.is_file())


def timed(goal: List[str], cwd: Path, env: Dict[str, str]) -> Tuple[float, Dict[str, int]]:
    command = ["bash", "pants", "--no-pantsd", "--no-dynamic-ui", "--stats-log", *goal]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        failed = [line for line in result.stderr.splitlines() if line.lstrip().startswith("✕")]
        if goal[0] != "test" or not failed:
            sys.exit(f"`{' '.join(command)}` in {cwd} failed:\n{result.stderr[-3000:]}")
        # A failing test still ran: its time counts; say which, and go on.
        print(f"`{' '.join(command)}` in {cwd}: {len(failed)} failed:\n" + "\n".join(failed),
              file=sys.stderr, flush=True)
    return elapsed, pants_counters(result.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", nargs="*", metavar="SPEC",
                        help="Also `test SPEC...` (default `test ::`, two more full suite runs; the "
                             "whole suite with two empty stores needs some 40 GB of disk).")
    parser.add_argument("--cold-downloads", action="store_true",
                        help="Empty named caches too: the cold build downloads every wheel.")
    args = parser.parse_args()

    root = repo_root()
    built = subprocess.run(["bash", "pants", "--no-dynamic-ui", "--concurrent", "package", SERVE], cwd=root,
                           capture_output=True, text=True)
    if built.returncode != 0:
        sys.exit(f"`./pants package {SERVE}` failed:\n{built.stderr[-3000:]}")
    scratch = Path(tempfile.mkdtemp(prefix="ml-platform-bench-cache-"))
    goals = [["package", "models/::"]] + ([["test", *(args.suite or ["::"])]] if args.suite is not None else [])
    rows = []
    try:
        with remote_cache(scratch / "cache", pex=root / "dist" / SERVE_PEX, max_size="200G") as cache:
            writer = scratch_clone(scratch / "writer")
            cold = []
            for goal in goals:
                print(f"{' '.join(goal)}: cold, writing the cache ...", file=sys.stderr, flush=True)
                cold.append(timed(goal, writer, clone_env(scratch / "writer-caches", cache.address, True,
                                                          args.cold_downloads)))
            # The writer's outputs and store are of no more use: the disk for the reader's.
            shutil.rmtree(writer, ignore_errors=True)
            shutil.rmtree(scratch / "writer-caches" / "lmdb_store", ignore_errors=True)
            reader = scratch_clone(scratch / "a-reader-elsewhere")
            for goal, (cold_s, wrote) in zip(goals, cold):
                print(f"{' '.join(goal)}: warm, reading it ...", file=sys.stderr, flush=True)
                warm_s, read = timed(goal, reader, clone_env(scratch / "reader-caches", cache.address, False,
                                                             args.cold_downloads))
                rows.append((" ".join(goal), cold_s, warm_s, disk_bytes(scratch / "reader-caches" / "lmdb_store"),
                             cache.size_bytes(), wrote.get("remote_cache_write_successes", 0),
                             read.get("remote_cache_requests_cached", 0),
                             read.get("remote_cache_requests_uncached", 0),
                             read.get("remote_cache_request_timeouts", 0)))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print(f"{'goal':<20}{'cold s':>9}{'warm s':>9}{'warm/cold':>11}{'store MB':>10}{'cache MB':>10}"
          f"{'written':>9}{'hits':>7}{'misses':>8}{'timeouts':>10}")
    for name, cold, warm, stored, size, written, hits, misses, timeouts in rows:
        print(f"{name:<20}{cold:>9.1f}{warm:>9.1f}{warm / cold:>10.1%}{stored / 1e6:>10.1f}{size / 1e6:>10.1f}"
              f"{written:>9}{hits:>7}{misses:>8}{timeouts:>10}")


if __name__ == "__main__":
    main()
