"""The shared build cache for tests and benches: BuildGrid (infra/remote_cache:serve) on a free
port of 127.0.0.1, stopped by its PID at the end, plain or as a team runs it (TLS from a private
CA, access tokens); and what Pants' `--stats-log` counted."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest
from remote_cache.cas_layout import blob_files

from testutil.net import free_port
from testutil.scratch import stop_pid
from testutil.tls import issue_server_certificate

# Where `runtime_package_dependencies=["//infra/remote_cache:serve", "//infra/remote_cache:token"]`
# put the server and the token tool.
SERVE_PEX = Path("infra/remote_cache/serve.pex")
TOKEN_PEX = Path("infra/remote_cache/token.pex")
_START_TIMEOUT = 60.0


@dataclass(frozen=True)
class RunningCache:
    address: str  # grpc://127.0.0.1:<port> (grpcs://localhost:<port> with TLS), ML_REMOTE_CACHE's form
    data: Path  # serve.py's --data: the CAS, laid out as remote_cache.cas_layout says
    log: Path
    pid: int
    ca: Optional[Path] = None  # with TLS: the CA that signed the server's certificate
    token_secret: Optional[Path] = None  # when it requires tokens: serve.py's --token-secret

    def token(self, subject: str, path: Path) -> Path:
        """A token for `subject`, issued as a team issues one (infra/remote_cache:token), in `path`."""
        assert self.token_secret is not None, "this cache takes no tokens: start it with tokens=True"
        result = subprocess.run([str(TOKEN_PEX), "--secret", str(self.token_secret), "--subject", subject,
                                 "--out", str(path)], capture_output=True, text=True, env=_own_env())
        assert result.returncode == 0, result.stderr
        return path

    def pants_env(self, token: Optional[Path] = None) -> Dict[str, str]:
        """What points Pants at this cache: ML_REMOTE_CACHE, and Pants' own options for the CA to
        trust and the token to send."""
        env = {"ML_REMOTE_CACHE": self.address}
        if self.ca is not None:
            env["PANTS_REMOTE_CA_CERTS_PATH"] = str(self.ca)
        if token is not None:
            env["PANTS_REMOTE_OAUTH_BEARER_TOKEN_PATH"] = str(token)
        return env

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
def remote_cache(data: Path, *, pex: Path = SERVE_PEX, max_size: str = "20G", tls: bool = False,
                 tokens: bool = False) -> Iterator[RunningCache]:
    """tls: serve TLS with a certificate from a private CA; tokens: require a token (see
    RunningCache.token) on every RPC, `ci-main`'s to write."""
    port = free_port()
    data.mkdir(parents=True, exist_ok=True)
    log = data.parent / f"{data.name}.log"
    options, address, ca, secret = [], f"grpc://127.0.0.1:{port}", None, None
    if tls:
        certificate = issue_server_certificate(data.parent / f"{data.name}-tls")
        options += ["--tls-cert", str(certificate.cert), "--tls-key", str(certificate.key)]
        # A name the certificate is for: Pants 2.17 takes no IP address with TLS (InvalidDNSNameError).
        address, ca = f"grpcs://localhost:{port}", certificate.ca
    if tokens:
        secret = data.parent / f"{data.name}-token-secret"
        secret.write_text(secrets.token_hex(32) + "\n")
        options += ["--token-secret", str(secret), "--writers", "ci-main"]
    with log.open("wb") as out:
        proc = subprocess.Popen([str(pex), "--data", str(data), "--address", f"127.0.0.1:{port}",
                                 "--max-size", max_size, *options], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=_own_env())
    try:
        deadline = time.monotonic() + _START_TIMEOUT
        while not _listening(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"BuildGrid did not start on 127.0.0.1:{port}:\n{log.read_text(errors='replace')}",
                            pytrace=False)
            time.sleep(0.2)
        yield RunningCache(address, data, log, proc.pid, ca=ca, token_secret=secret)
    finally:
        stop_pid(proc.pid, f"127.0.0.1:{port}")  # the PID is still ours
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)


def pants_counters(output: str) -> Dict[str, int]:
    """The counters `./pants --stats-log` prints at the end of a run (`  name: value` lines)."""
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^\s+([a-z_]+): (\d+)$", output, re.M)}
