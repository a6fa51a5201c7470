"""Scratch clones of this repository for the benches (`python3 bench/<name>.py` puts bench/ on
sys.path, so they `import scratch`): a git clone of the current commit, optionally with Pants
caches of its own so that its first build is truly cold, and its pantsd stopped at the end.
Standard library only."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def clone(destination: Path) -> Path:
    """A git clone of this repository's current commit at `destination`."""
    subprocess.run(["git", "clone", "-q", str(REPO), str(destination)], check=True)
    return destination


def own_caches(root: Path) -> dict[str, str]:
    """This process's environment, with Pants' store, named caches and execution root in `root`
    (created empty if missing): a first build there downloads and builds everything."""
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        "PANTS_LOCAL_STORE_DIR": str(root / "lmdb_store"),
        "PANTS_NAMED_CACHES_DIR": str(root / "named_caches"),
        "PANTS_LOCAL_EXECUTION_ROOT_DIR": str(root / "tmp"),
    }


def stop_pid(pid: int, expect: str, timeout: float = 10.0) -> None:
    """SIGTERM `pid` (then SIGKILL) if it is still the process we started (`expect` in its cmdline)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return
    if expect not in cmdline:
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def stop_pantsd(clone: Path) -> None:
    """Stops the pantsd a clone's Pants runs started, if it is still running."""
    # Pants 2.17 keeps its pid in <buildroot>/.pids/<fingerprint>/pantsd/pid; older ones in .pants.d.
    for pid_file in [*clone.glob(".pids/*/pantsd/pid"), clone / ".pants.d/pids/pantsd/pid"]:
        with contextlib.suppress(OSError, ValueError):
            stop_pid(int(pid_file.read_text().strip()), "pantsd")
