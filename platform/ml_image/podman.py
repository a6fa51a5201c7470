"""A private podman store for tests and benchmarks: podman as root without a daemon, set up the
way these machines allow it."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator


# podman as root without a daemon, as these machines allow it: runc (crun fails on cgroups
# hybrid mode), cgroupfs, events to a file, lowered default ulimits (the defaults fail with
# "error setting rlimit") and host networking (no bridge: everything stays on 127.0.0.1).
PODMAN_CONF = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
netns = "host"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
# File locks: the default shared-memory lock table is shared by every podman on the machine,
# and instances on other stores reusing its slots make podman lose track of containers.
lock_type = "file"
"""


@dataclass
class Podman:
    """A private podman store: `argv` starts a podman command on it, `env` configures it."""

    argv: list
    env: dict
    state: Path

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([*self.argv, *args], capture_output=True, text=True, env=self.env)
        if check and result.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed:\n{result.stderr}")
        return result


@contextlib.contextmanager
def podman_store() -> Iterator[Podman]:
    """Yields a Podman on a fresh store under /tmp, removed (with its containers) afterwards."""
    if shutil.which("podman") is None:
        raise RuntimeError("`podman` is not installed: run `apt-get install podman runc` "
                           "(.ci/install-deps does).")
    # Short paths: podman refuses a runroot longer than 50 characters.
    state = Path(tempfile.mkdtemp(prefix="pm-", dir="/tmp"))
    (state / "containers.conf").write_text(PODMAN_CONF)
    podman = Podman(
        # --tmpdir too: `system reset` wipes it, and the default (/run/libpod) is shared.
        ["podman", "--root", str(state / "root"), "--runroot", str(state / "run"),
         "--tmpdir", str(state / "tmp")],
        {**os.environ, "CONTAINERS_CONF": str(state / "containers.conf")},
        state,
    )
    try:
        yield podman
    finally:
        podman("rm", "--all", "--force", "--time", "0", check=False)
        podman("system", "reset", "--force", check=False)
        shutil.rmtree(state, ignore_errors=True)
