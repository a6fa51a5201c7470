#!/usr/bin/env python3
"""Build-time figures for `./pants package models/::`, measured side by side in one run.

Works in a scratch clone of the current commit with its own empty Pants caches (so "cold" is
truly cold: wheels are downloaded and every PEX built) and its own pantsd, which it stops at
the end. Prints each case's median wall time and its ratio to the cold build:

  cold        first build, empty caches
  no-op       the same command again, nothing changed
  one model   after appending a line to one model's code

Usage: ./pants run bench/package_build.py -- [--repeats N]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from testutil.scratch import clone as scratch_clone, own_caches, stop_pantsd

COMMAND = ["bash", "pants", "--no-dynamic-ui", "package", "models/::"]


def timed(cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(COMMAND, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"`{' '.join(COMMAND)}` failed:\n{result.stderr[-3000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="Runs of each warm case (median).")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="ml-platform-bench-"))
    clone = scratch_clone(scratch / "repo")
    env = own_caches(scratch)  # empty caches of this run's own: a cold build downloads and builds everything
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
