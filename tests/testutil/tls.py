"""TLS as a team's own certificate authority gives it: a private CA, and a server certificate it
signed for this machine's loopback (localhost and 127.0.0.1), made with the openssl CLI.

A client trusts the CA, not the server's certificate itself, as with a team's own CA; the server's
certificate is no CA (a leaf certificate with the server-auth usage)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from testutil.registry import require_tool

_DAYS = "2"
_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
_SERVER_EXTENSIONS = """\
subjectAltName = DNS:localhost, IP:127.0.0.1
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
"""


@dataclass(frozen=True)
class ServerCertificate:
    ca: Path  # what clients trust (PEM)
    cert: Path  # the server's certificate, signed by `ca` (PEM)
    key: Path  # its private key (PEM)


def issue_server_certificate(root: Path) -> ServerCertificate:
    openssl = require_tool("openssl", "openssl")
    root.mkdir(parents=True, exist_ok=True)
    files = ServerCertificate(ca=root / "ca.pem", cert=root / "server.pem", key=root / "server.key")

    def run(*args: object) -> None:
        result = subprocess.run([openssl, *map(str, args)], capture_output=True, text=True)
        assert result.returncode == 0, f"openssl {' '.join(map(str, args))}:\n{result.stderr}"

    run("req", "-x509", *_KEY, "-keyout", root / "ca.key", "-out", files.ca, "-subj", "/CN=ml-platform test CA",
        "-days", _DAYS)
    run("req", "-new", *_KEY, "-keyout", files.key, "-out", root / "server.csr", "-subj", "/CN=localhost")
    (root / "server.ext").write_text(_SERVER_EXTENSIONS)
    run("x509", "-req", "-in", root / "server.csr", "-CA", files.ca, "-CAkey", root / "ca.key", "-CAcreateserial",
        "-out", files.cert, "-days", _DAYS, "-extfile", root / "server.ext")
    return files
