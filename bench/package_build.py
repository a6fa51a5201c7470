#!/usr/bin/env python3
"""Build-time figures for `./pants package models/::`, measured side by side in one run.

Works in a scratch clone of the current commit with its own empty Pants caches (so "cold" is
truly cold: wheels are downloaded and every PEX built) and its own pantsd, which it stops at
the end. Prints each case's median wall time and its ratio to the cold build:

  cold        first build, empty caches
  no-op       the same command again, nothing changed
  one model   after appending a line to one model's code

Usage: python3 bench/package_build.py [--repeats N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COMMAND = ["bash", "pants", "--no-dynamic-ui", "package", "models/::"]


def timed(cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(COMMAND, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"`{' '.join(COMMAND)}` failed:\n{result.stderr[-3000:]}")
    return elapsed


def stop_pantsd(clone: Path) -> None:
    # Pants 2.17 keeps the pid in <buildroot>/.pids/<fingerprint>/pantsd/pid.
    for pid_file in clone.glob(".pids/*/pantsd/pid"):
        pid = int(pid_file.read_text().strip())
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="Runs of each warm case (median).")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="ml-platform-bench-"))
    clone = scratch / "repo"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    env = {
        **os.environ,
        # Empty caches of this run's own: a cold build downloads and builds everything.
        "PANTS_LOCAL_STORE_DIR": str(scratch / "lmdb_store"),
        "PANTS_NAMED_CACHES_DIR": str(scratch / "named_caches"),
        "PANTS_LOCAL_EXECUTION_ROOT_DIR": str(scratch / "tmp"),
    }
    (scratch / "tmp").mkdir()
    try:
        print("cold build (empty caches) ...", file=sys.stderr)
        cold = timed(clone, env)
        noop = [timed(clone, env) for _ in range(args.repeats)]
        one_model = []
        model_file = clone / "models" / "iris" / "src" / "model.py"
        for i in range(args.repeats):
            with model_file.open("a") as f:
                f.write(f"# bench edit {i}\n")
            one_model.append(timed(clone, env))
    finally:
        stop_pantsd(clone)

    rows = [("cold", cold), ("no-op", statistics.median(noop)), ("one model", statistics.median(one_model))]
    print(f"{'case':<12}{'seconds':>10}{'vs cold':>10}")
    for name, seconds in rows:
        print(f"{name:<12}{seconds:>10.2f}{seconds / cold:>9.1%}")
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
