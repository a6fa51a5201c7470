"""Supervision of the detached processes a local environment runs (backends and the gateway):
start them marked, tell them from reused pids, stop them, and find the ones nobody owns.

Every process started here carries ML_LOCAL_STATE=<state dir> in its environment (inherited by
its children), so that `stop` also finds processes a crashed deploy left behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ml_deploy.local.state import Site, now

STOP_TIMEOUT = 40.0  # the server's shutdown grace (30 s, ML_SHUTDOWN_GRACE) and a margin
STATE_MARK = "ML_LOCAL_STATE"
RELEASE_MARK = "ML_LOCAL_RELEASE"


def proc_start(pid: Optional[int]) -> Optional[int]:
    """When `pid` started (clock ticks since boot), or None if it is not running (a zombie is
    not). Compared with the recorded value, it tells our process from a reused pid."""
    if not pid:
        return None
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our own child that exited
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


def alive(pid: Optional[int], pid_start: Optional[int]) -> bool:
    return pid is not None and proc_start(pid) == pid_start


def child_env(site: Site, key: str, extra: Dict[str, str]) -> Dict[str, str]:
    # The deploy tool itself runs from a PEX: its PEX_* settings (a sandbox-relative PEX_ROOT,
    # the tool's own entry point) must not leak into the packaged PEXes started here.
    env = {k: v for k, v in os.environ.items() if not k.lstrip("_").startswith("PEX")}
    env.update(extra)
    env[STATE_MARK] = str(site.root)
    env[RELEASE_MARK] = key
    return env


def spawn(site: Site, key: str, argv: Sequence[str], cwd: Path, log: Path, banner: str,
          extra_env: Dict[str, str]) -> Tuple[subprocess.Popen, Optional[int]]:
    """Start `argv` detached (its own session: it outlives the deploy tool and is stopped by
    pid), marked as `key` of this site, appending to `log`. Returns it and its start time."""
    with log.open("ab") as out:
        out.write(f"--- {now()} {banner}\n".encode())
        out.flush()
        process = subprocess.Popen(
            list(argv), cwd=cwd, env=child_env(site, key, extra_env),
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    return process, proc_start(process.pid)


def stop_process(pid: Optional[int], pid_start: Optional[int], timeout: float = STOP_TIMEOUT) -> str:
    """SIGTERM (the server finishes what is in flight and exits), SIGKILL to its process group
    (its workers too) if it has not exited within `timeout` seconds."""
    if not alive(pid, pid_start):
        return "had already exited"
    assert pid is not None
    started = time.monotonic()
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    while time.monotonic() - started < timeout:
        if not alive(pid, pid_start):
            return f"drained and exited in {time.monotonic() - started:.1f} s"
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)  # started in its own session: pgid == pid
    return f"killed: it had not exited {timeout:g} s after SIGTERM"


def stop_group(group: int, timeout: float = STOP_TIMEOUT) -> str:
    """A stray process group (its leader may be gone): SIGTERM, then SIGKILL."""
    def members() -> bool:
        try:
            os.killpg(group, 0)
            return any(proc_start(pid) is not None for pid in _group_members(group))
        except ProcessLookupError:
            return False

    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while members():
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
            return "killed"
        time.sleep(0.05)
    return "exited on SIGTERM"


def _group_members(group: int) -> List[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                if int((entry / "stat").read_text().rpartition(")")[2].split()[2]) == group:
                    pids.append(int(entry.name))
    return pids


def marked_processes(site: Site) -> Dict[int, str]:
    """pid -> release key of every process started from this state directory (and their
    children, which inherit the mark)."""
    found: Dict[int, str] = {}
    mark = f"{STATE_MARK}={site.root}".encode()
    prefix = RELEASE_MARK.encode() + b"="
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if mark in environ:
            found[int(entry.name)] = next((e[len(prefix):].decode() for e in environ if e.startswith(prefix)), "")
    return found


def strays(site: Site, known: set, model: Optional[str] = None) -> Dict[int, str]:
    """Process groups started from this state directory that no deployment or gateway owns
    (left by a deploy that was killed half-way): group leader pid -> release key."""
    found: Dict[int, str] = {}
    for pid, key in marked_processes(site).items():
        if pid == os.getpid():
            continue
        try:
            group = os.getpgid(pid)
        except OSError:
            continue
        if group in known or (model is not None and not key.startswith(f"{model}-v")):
            continue
        found.setdefault(group, key)
    return found
