#!/usr/bin/env python3
"""The shared build cache's figures, measured side by side in one run.

Two scratch clones of the current commit at different paths (--same-path: at one), each with an
empty Pants store and execution root of its own, share one BuildGrid on 127.0.0.1
(infra/remote_cache:serve, empty at the start):

  cold   the first clone builds everything and writes the cache (ML_REMOTE_CACHE_WRITE=true)
  warm   the second clone, as a new CI runner or developer would, reads it

For `package models/::` (every model, the PyTorch ones included) and, with --suite, for
`test ::` (or the specs given): wall time, warm/cold, the bytes the reader downloaded (sent over
127.0.0.1 during its run), what its empty store took in (bytes on disk afterwards: what it
downloaded, plus what it built itself), the cache's size on disk afterwards, and Pants' counters
of the reader's lookups. Pants' named caches (downloaded wheels, never part of a cache
key) are this machine's, unless --cold-downloads gives each clone empty ones (then the cold
build downloads every wheel again).

Usage: ./pants run bench/build_cache.py -- [--package SPEC ...] [--suite [SPEC ...]] [--cold-downloads]
       [--same-path]
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
# The reader's `remote_cache_<name>` counters, and their columns. A lookup races the process run
# locally (Pants 2.17 starts both at once): "local first" are lookups that lost that race.
READ_COUNTERS = (("requests", "lookups"), ("requests_cached", "hits"), ("requests_uncached", "misses"),
                 ("read_errors", "errors"), ("request_timeouts", "timeouts"),
                 ("speculation_local_completed_first", "local first"))


def clone_env(root: Path, cache: str, write: bool, cold_downloads: bool) -> Dict[str, str]:
    env = own_caches(root)
    if not cold_downloads:
        env.pop("PANTS_NAMED_CACHES_DIR")
    return {**env, "ML_REMOTE_CACHE": cache, "ML_REMOTE_CACHE_WRITE": "true" if write else "false"}


def disk_bytes(folder: Path) -> int:
    """Bytes on disk under `folder` (allocated blocks: Pants' LMDB files are sparse)."""
    return sum(p.stat().st_blocks * 512 for p in folder.rglob("*") if p.is_file())


LOOPBACK_SENT = Path("/sys/class/net/lo/statistics/tx_bytes")


def loopback_bytes() -> int:
    """Bytes sent over 127.0.0.1 so far, by every process of this machine: around the reader's
    run (no pantsd, the cache its only peer) the delta is what it downloaded, plus its requests."""
    return int(LOOPBACK_SENT.read_text())


def drop_outputs(clone: Path) -> None:
    """What a goal wrote to dist/ (every image, 16 GB for models/::) is in the clone's store too,
    and no later goal reads it: the disk for the suite (--suite's help says how much)."""
    shutil.rmtree(clone / "dist", ignore_errors=True)


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
    # Pants says why a lookup failed only in its warnings (with back-off): pass them on.
    for warning in sorted({line for line in result.stderr.splitlines() if "remote cache" in line}):
        print(f"{cwd.name}: {warning[:600]}", file=sys.stderr, flush=True)
    return elapsed, pants_counters(result.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", nargs="*", default=["models/::"], metavar="SPEC",
                        help="What to package (default models/::, every model; none: package nothing).")
    parser.add_argument("--suite", nargs="*", metavar="SPEC",
                        help="Also `test SPEC...` (default `test ::`, two more full suite runs; with "
                             "models/:: packaged first, some 25 GB of disk: the cache and a clone's "
                             "store, 9 GB each, and the suite's sandboxes).")
    parser.add_argument("--cold-downloads", action="store_true",
                        help="Empty named caches too: the cold build downloads every wheel.")
    parser.add_argument("--same-path", action="store_true",
                        help="The reader where the writer was, as CI runners of one image check out "
                             "(on this one machine, they are then alike for the tests that use its "
                             "tools, as runners with one ML_TEST_MACHINE are, and share their results).")
    args = parser.parse_args()

    root = repo_root()
    built = subprocess.run(["bash", "pants", "--no-dynamic-ui", "--concurrent", "package", SERVE], cwd=root,
                           capture_output=True, text=True)
    if built.returncode != 0:
        sys.exit(f"`./pants package {SERVE}` failed:\n{built.stderr[-3000:]}")
    scratch = Path(tempfile.mkdtemp(prefix="ml-platform-bench-cache-"))
    goals = ([["package", *args.package]] if args.package else []) + \
        ([["test", *(args.suite or ["::"])]] if args.suite is not None else [])
    rows = []
    try:
        with remote_cache(scratch / "cache", pex=root / "dist" / SERVE_PEX, max_size="200G") as cache:
            writer = scratch_clone(scratch / "writer")
            cold = []
            for goal in goals:
                print(f"{' '.join(goal)}: cold, writing the cache ...", file=sys.stderr, flush=True)
                cold.append(timed(goal, writer, clone_env(scratch / "writer-caches", cache.address, True,
                                                          args.cold_downloads)))
                drop_outputs(writer)
            # The writer's outputs and store are of no more use: the disk for the reader's.
            shutil.rmtree(writer, ignore_errors=True)
            shutil.rmtree(scratch / "writer-caches" / "lmdb_store", ignore_errors=True)
            reader = scratch_clone(scratch / ("writer" if args.same_path else "a-reader-elsewhere"))
            for goal, (cold_s, wrote) in zip(goals, cold):
                print(f"{' '.join(goal)}: warm, reading it ...", file=sys.stderr, flush=True)
                sent_before = loopback_bytes()
                warm_s, read = timed(goal, reader, clone_env(scratch / "reader-caches", cache.address, False,
                                                             args.cold_downloads))
                downloaded = loopback_bytes() - sent_before
                drop_outputs(reader)
                rows.append((" ".join(goal), cold_s, warm_s, downloaded, disk_bytes(scratch / "reader-caches" / "lmdb_store"),
                             cache.size_bytes(), wrote.get("remote_cache_write_successes", 0),
                             *(read.get(f"remote_cache_{name}", 0) for name, _ in READ_COUNTERS)))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print(f"{'goal':<20}{'cold s':>9}{'warm s':>9}{'warm/cold':>11}{'got MB':>9}{'store MB':>10}{'cache MB':>10}"
          f"{'written':>9}" + "".join(f"{title:>{len(title) + 2}}" for _, title in READ_COUNTERS))
    for name, cold, warm, downloaded, stored, size, written, *read in rows:
        print(f"{name:<20}{cold:>9.1f}{warm:>9.1f}{warm / cold:>10.1%}{downloaded / 1e6:>9.1f}{stored / 1e6:>10.1f}"
              f"{size / 1e6:>10.1f}"
              f"{written:>9}" + "".join(f"{n:>{len(title) + 2}}" for n, (_, title) in zip(read, READ_COUNTERS)))


if __name__ == "__main__":
    main()
