"""The shared build cache for tests and benches: BuildGrid (infra/remote_cache:serve) on a free
port of 127.0.0.1, stopped by its PID at the end; and what Pants' `--stats-log` counted."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List

import pytest
from remote_cache.cas_layout import blob_files

from testutil.net import free_port
from testutil.scratch import stop_pid

# Where `runtime_package_dependencies=["//infra/remote_cache:serve"]` puts the server.
SERVE_PEX = Path("infra/remote_cache/serve.pex")
_START_TIMEOUT = 60.0


@dataclass(frozen=True)
class RunningCache:
    address: str  # grpc://127.0.0.1:<port>, ML_REMOTE_CACHE's form
    data: Path  # serve.py's --data: the CAS, laid out as remote_cache.cas_layout says
    log: Path
    pid: int

    def blobs(self) -> List[Path]:
        return list(blob_files(self.data))

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.blobs())


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


def _own_env() -> Dict[str, str]:
    """The environment without what a PEX running us (`pants run` of a bench) set for itself:
    the server is a PEX of its own, with its own sys.path."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PEX_") and k != "PYTHONPATH"}


@contextlib.contextmanager
def remote_cache(data: Path, *, pex: Path = SERVE_PEX, max_size: str = "20G") -> Iterator[RunningCache]:
    port = free_port()
    data.mkdir(parents=True, exist_ok=True)
    log = data.parent / f"{data.name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(pex), "--data", str(data), "--address", f"127.0.0.1:{port}",
                                 "--max-size", max_size], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=_own_env())
    try:
        deadline = time.monotonic() + _START_TIMEOUT
        while not _listening(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"BuildGrid did not start on 127.0.0.1:{port}:\n{log.read_text(errors='replace')}",
                            pytrace=False)
            time.sleep(0.2)
        yield RunningCache(f"grpc://127.0.0.1:{port}", data, log, proc.pid)
    finally:
        stop_pid(proc.pid, f"127.0.0.1:{port}")  # the PID is still ours
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)


def pants_counters(output: str) -> Dict[str, int]:
    """The counters `./pants --stats-log` prints at the end of a run (`  name: value` lines)."""
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^\s+([a-z_]+): (\d+)$", output, re.M)}
