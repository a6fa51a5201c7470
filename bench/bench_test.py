"""Every bench still starts as `./pants run bench/<name>.py` starts it: a file, run with its own
folder first on sys.path. Benches run by hand and rarely, so nothing else notices one that no
longer imports (bench/remote_cache.py once shadowed infra's remote_cache package so)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHES = sorted(p for p in Path(__file__).parent.glob("*.py") if not p.name.endswith("_test.py"))


def test_every_bench_is_here() -> None:
    # An empty list would make the test below collect nothing, not fail.
    assert {"serving.py", "build_cache.py"} <= {p.name for p in BENCHES}, BENCHES


@pytest.mark.parametrize("bench", BENCHES, ids=lambda p: p.stem)
def test_the_bench_starts_and_says_how_to_use_it(bench: Path, tmp_path: Path) -> None:
    # The sandbox's other source roots and requirements, as `./pants run` gives them ...
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(os.path.abspath(p) for p in sys.path if p)}
    # ... in a git checkout, where `./pants run` runs a bench (several find the repository so).
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    result = subprocess.run([sys.executable, str(bench.resolve()), "--help"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("usage:"), result.stdout[:500]
