"""Test helpers: a real CNCF distribution registry (Debian's docker-registry) on 127.0.0.1.

    with start_registry(tmp_path / "registry") as running:            # htpasswd (bcrypt) Basic auth
        push_layout(layout, running.ref("ml/iris", "v1"), Auth(*running.credentials))
    with start_registry(tmp_path / "anon", auth="none") as running:   # anonymous
        ...

The registry listens on a free port of 127.0.0.1 only, keeps its data and log under `root`, and
is stopped (by its PID) when the `with` block ends, whatever happened in it. A missing tool
fails the test (it does not skip it) and says which Debian package to install.
"""

from __future__ import annotations

import contextlib
import http.client
import shutil
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Tuple

import pytest

from testutil.net import free_port

USERNAME, PASSWORD = "ci-user", "s3cret-Pa55word"
REGISTRY_PACKAGES = "docker-registry apache2-utils"
_START_TIMEOUT = 20.0
_STOP_TIMEOUT = 10.0


def require_tool(tool: str, package: str) -> str:
    """The path of `tool`, or fail the test with how to install it (`apt-get install package`)."""
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed; install it with: apt-get install {package}", pytrace=False)
    return path


@dataclass
class RunningRegistry:
    host: str  # 127.0.0.1:port
    root: Path
    proc: subprocess.Popen
    # (username, password) the registry accepts, for htpasswd auth; None otherwise.
    credentials: Optional[Tuple[str, str]] = None

    @property
    def port(self) -> int:
        return int(self.host.rsplit(":", 1)[1])

    def ref(self, repository: str, tag: str = "1") -> str:
        return f"{self.host}/{repository}:{tag}"

    def log(self) -> str:
        path = self.root / "registry.log"
        return path.read_text(errors="replace") if path.exists() else ""


def htpasswd_auth(root: Path, username: str = USERNAME, password: str = PASSWORD) -> str:
    """Write root/htpasswd with a bcrypt entry for username; returns the registry's `auth:` section."""
    htpasswd = require_tool("htpasswd", REGISTRY_PACKAGES)
    line = subprocess.run([htpasswd, "-Bbn", username, password], check=True, capture_output=True,
                          text=True).stdout.strip()
    assert line.startswith(f"{username}:$2"), "htpasswd did not make a bcrypt entry"
    (root / "htpasswd").write_text(line + "\n")
    return f"""\
auth:
  htpasswd:
    realm: test-registry
    path: {root / "htpasswd"}
"""


def _registry_config(root: Path, port: int, auth_yaml: str, tls: Optional[Tuple[Path, Path]]) -> str:
    tls_yaml = f"  tls:\n    certificate: {tls[0]}\n    key: {tls[1]}\n" if tls else ""
    return f"""\
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {root / "data"}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
  secret: registry-test-secret
{tls_yaml}{auth_yaml}"""


def _answers(port: int, tls: bool) -> bool:
    try:
        conn = (http.client.HTTPSConnection("127.0.0.1", port, timeout=2,
                                            context=ssl._create_unverified_context()) if tls
                else http.client.HTTPConnection("127.0.0.1", port, timeout=2))
        try:
            conn.request("GET", "/v2/")
            return conn.getresponse().status in (200, 401)
        finally:
            conn.close()
    except (OSError, http.client.HTTPException):
        return False


@contextlib.contextmanager
def start_registry(root: Path, auth: str = "htpasswd", *, tls: Optional[Tuple[Path, Path]] = None,
                   auth_yaml: Optional[str] = None, username: str = USERNAME,
                   password: str = PASSWORD) -> Iterator[RunningRegistry]:
    """Run docker-registry on a free port of 127.0.0.1 until the block ends, then stop it.

    auth: "htpasswd" (Basic auth for username/password, bcrypt), "none" (anonymous), or
    "custom" with `auth_yaml`, the registry's whole `auth:` section (e.g. token auth).
    tls: (certificate, key) files to serve HTTPS instead of plain HTTP.
    """
    if auth == "custom":
        if not auth_yaml:
            raise ValueError('auth="custom" needs auth_yaml, the registry\'s `auth:` section')
    elif auth_yaml is not None:
        raise ValueError('auth_yaml is only used with auth="custom"')
    elif auth not in ("htpasswd", "none"):
        raise ValueError(f'auth must be "htpasswd", "none" or "custom", not {auth!r}')
    binary = require_tool("docker-registry", REGISTRY_PACKAGES)
    root.mkdir(parents=True, exist_ok=True)
    credentials: Optional[Tuple[str, str]] = None
    if auth == "htpasswd":
        auth_yaml = htpasswd_auth(root, username, password)
        credentials = (username, password)
    elif auth == "none":
        auth_yaml = ""
    assert auth_yaml is not None
    port = free_port()
    config = root / "config.yml"
    config.write_text(_registry_config(root, port, auth_yaml, tls))
    log_path = root / "registry.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + _START_TIMEOUT
            while not _answers(port, tls is not None):
                if proc.poll() is not None:
                    pytest.fail(f"docker-registry exited with {proc.returncode}:\n"
                                f"{log_path.read_text(errors='replace')}", pytrace=False)
                if time.monotonic() > deadline:
                    pytest.fail(f"docker-registry did not answer on 127.0.0.1:{port}:\n"
                                f"{log_path.read_text(errors='replace')}", pytrace=False)
                time.sleep(0.05)
            yield RunningRegistry(f"127.0.0.1:{port}", root, proc, credentials)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

