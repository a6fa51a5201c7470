"""A private podman store for tests and benchmarks: podman as root without a daemon, set up the
way these machines allow it."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
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


def load_layout(podman: Podman, layout: Path) -> str:
    """`podman load` the image of an OCI layout (a package's image/), through a docker archive
    made for the purpose and removed after; returns what podman printed (the loaded name)."""
    from ml_image.model_image import write_docker_archive

    archive = podman.state / "tmp" / "image.tar"
    archive.parent.mkdir(parents=True, exist_ok=True)
    try:
        with archive.open("wb") as f:
            write_docker_archive(layout, f)
        return podman("load", "-i", str(archive)).stdout
    finally:
        archive.unlink(missing_ok=True)


@contextlib.contextmanager
def podman_service(podman: Podman, timeout: float = 30) -> Iterator[str]:
    """Serves the Docker API of `podman`'s store on a private unix socket (`podman system
    service`) and yields its DOCKER_HOST URL; the service is stopped afterwards (SIGTERM to its
    PID, then SIGKILL if it has not exited within 20 s)."""
    socket = podman.state / "api.sock"
    log = podman.state / "service.log"
    with log.open("wb") as stderr:
        service = subprocess.Popen(
            [*podman.argv, "system", "service", "--time=0", f"unix://{socket}"],
            env=podman.env, stdout=subprocess.DEVNULL, stderr=stderr,
        )
    try:
        deadline = time.monotonic() + timeout
        while not socket.exists():
            if service.poll() is not None:
                raise RuntimeError(f"podman system service exited with code {service.returncode}:\n"
                                   f"{log.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"podman's API socket did not appear within {timeout:g} s")
            time.sleep(0.05)
        yield f"unix://{socket}"
    finally:
        service.send_signal(signal.SIGTERM)  # to its PID; a no-op once it has exited
        try:
            service.wait(timeout=20)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait()
