"""ml_image.registry against a real CNCF distribution registry (Debian's docker-registry, 2.8).

Three registries run on 127.0.0.1, each started by a fixture and stopped by PID: one with
htpasswd (bcrypt) Basic auth, one anonymous, and one with token auth whose token server (RS256
JWTs signed by the openssl CLI) runs in this process. A small in-process fake registry covers
what a well-behaved registry never does: relative upload Locations, tampered content, error
bodies, a wrong Docker-Content-Digest.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import tarfile
import threading
import time
import tracemalloc
import urllib.parse
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import pytest

from ml_image import registry
from ml_image.registry import (
    Auth,
    AuthenticationError,
    DigestMismatchError,
    InsecureTransportError,
    InvalidReference,
    Reference,
    RegistryClient,
    RegistryError,
    pull,
    push_layout,
)
from ml_image.layers import file_digest
from testutil.net import free_port
from testutil.registry import RunningRegistry, require_tool, start_registry
from testutil.tls import issue_server_certificate

USER, PASSWORD = "ci-user", "s3cret-Pa55word"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG = "application/vnd.oci.image.config.v1+json"


# ---------------------------------------------------------------------------------------------
# Image layouts made here


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Layout:
    path: Path
    manifest_digest: str
    config: Tuple[str, int]
    layers: List[Tuple[str, int]]

    def blob(self, digest: str) -> Path:
        return self.path / "blobs" / "sha256" / digest.split(":")[1]


def _tar_layer(blobs: Path, name: str, content: bytes, gzipped: bool) -> Tuple[str, int, str]:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(f"opt/app/{name}")
        info.size, info.mtime, info.mode = len(content), 0, 0o644
        tar.addfile(info, io.BytesIO(content))
    raw = buf.getvalue()
    blob = gzip.compress(raw, mtime=0) if gzipped else raw
    digest = _digest(blob)
    (blobs / digest.split(":")[1]).write_bytes(blob)
    return digest, len(blob), _digest(raw)


def _big_tar_layer(blobs: Path, size: int) -> Tuple[str, int, str]:
    """An uncompressed tar with `size` random bytes, written and hashed in chunks."""
    source = blobs.parent.parent / "big.bin"
    with source.open("wb") as f:
        for _ in range(size >> 20):
            f.write(os.urandom(1 << 20))
    tmp = blobs / "big.tar.tmp"
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("opt/app/big.bin")
        info.size, info.mtime = size, 0
        with source.open("rb") as f:
            tar.addfile(info, f)
    source.unlink()
    digest = file_digest(tmp)
    tmp.rename(blobs / digest.split(":")[1])
    return digest, (blobs / digest.split(":")[1]).stat().st_size, digest


def make_layout(path: Path, layers: Dict[str, bytes], tag: str = "1", big: int = 0,
                gzipped: bool = True, docker_types: bool = False) -> Layout:
    """A minimal valid single-platform image: one layer per entry of `layers`, a config, a manifest."""
    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    descs, diff_ids = [], []
    for name, content in layers.items():
        digest, size, diff_id = _tar_layer(blobs, name, content, gzipped)
        media = ("application/vnd.docker.image.rootfs.diff.tar.gzip" if docker_types
                 else LAYER_GZIP if gzipped else LAYER_TAR)
        descs.append({"mediaType": media, "digest": digest, "size": size})
        diff_ids.append(diff_id)
    if big:
        digest, size, diff_id = _big_tar_layer(blobs, big)
        descs.append({"mediaType": LAYER_TAR, "digest": digest, "size": size})
        diff_ids.append(diff_id)
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/usr/bin"], "Cmd": ["/bin/true"], "Labels": {"layers": ",".join(layers)}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }, sort_keys=True).encode()
    config_digest = _digest(config)
    (blobs / config_digest.split(":")[1]).write_bytes(config)
    manifest_type = registry.MEDIA_TYPE_DOCKER_MANIFEST if docker_types else MANIFEST
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": manifest_type,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json" if docker_types else CONFIG,
                   "digest": config_digest, "size": len(config)},
        "layers": descs,
    }, sort_keys=True).encode()
    manifest_digest = _digest(manifest)
    (blobs / manifest_digest.split(":")[1]).write_bytes(manifest)
    (path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (path / "index.json").write_text(json.dumps({
        "schemaVersion": 2, "mediaType": INDEX,
        "manifests": [{"mediaType": manifest_type, "digest": manifest_digest, "size": len(manifest),
                       "annotations": {"org.opencontainers.image.ref.name": tag}}],
    }))
    return Layout(path, manifest_digest, (config_digest, len(config)),
                  [(d["digest"], d["size"]) for d in descs])


def _json_blob(layout: Path, value: dict) -> Tuple[str, int]:
    data = json.dumps(value, sort_keys=True).encode()
    digest = _digest(data)
    (layout / "blobs" / "sha256" / digest.split(":")[1]).write_bytes(data)
    return digest, len(data)


# ---------------------------------------------------------------------------------------------
# Real registries


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    with start_registry(tmp_path_factory.mktemp("basic-registry"), username=USER, password=PASSWORD) as running:
        yield running


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tuple[RunningRegistry, Path]]:
    """HTTPS with a private CA's certificate for 127.0.0.1, and Basic auth; yields the CA file too."""
    root = tmp_path_factory.mktemp("tls-registry")
    certificate = issue_server_certificate(root / "tls")
    with start_registry(root, tls=(certificate.cert, certificate.key), username=USER, password=PASSWORD) as running:
        yield running, certificate.ca


@pytest.fixture(scope="module")
def anon_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    with start_registry(tmp_path_factory.mktemp("anon-registry"), auth="none") as running:
        yield running


# -- token auth: a token server in this process, JWTs signed with the openssl CLI --------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """Issues RS256 JWTs for docker-registry's `auth: token:`, to USER/PASSWORD only."""

    service, issuer = "test-registry", "test-token-issuer"

    def __init__(self, root: Path) -> None:
        openssl = require_tool("openssl", "openssl")
        self.key, self.cert = root / "token.key", root / "token.pem"
        subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(self.key),
                        "-out", str(self.cert), "-subj", "/CN=test-token-issuer", "-days", "2",
                        "-addext", "keyUsage=digitalSignature,keyCertSign"],
                       check=True, capture_output=True)
        self.cert_der = ssl.PEM_cert_to_DER_cert(self.cert.read_text())
        self.openssl = openssl
        self.requests: List[Tuple[Optional[str], List[str]]] = []  # (basic user, scopes)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                user = None
                header = self.headers.get("Authorization", "")
                if header.startswith("Basic "):
                    user, _, password = base64.b64decode(header[6:]).decode().partition(":")
                    if (user, password) != (USER, PASSWORD):
                        body = json.dumps({"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]})
                        self._answer(401, body.encode())
                        return
                scopes = [s for v in query.get("scope", []) for s in v.split(" ")]
                server.requests.append((user, scopes))
                token = server.sign(query.get("service", [""])[0], scopes if user else [])
                self._answer(200, json.dumps({"token": token, "access_token": token, "expires_in": 300}).encode())

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.realm = f"http://127.0.0.1:{self.httpd.server_address[1]}/token"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def sign(self, audience: str, scopes: List[str]) -> str:
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        header = {"alg": "RS256", "typ": "JWT", "x5c": [base64.b64encode(self.cert_der).decode()]}
        claims = {"iss": self.issuer, "sub": USER, "aud": audience, "exp": now + 300, "nbf": now - 10,
                  "iat": now, "jti": uuid.uuid4().hex, "access": access}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = subprocess.run([self.openssl, "dgst", "-sha256", "-sign", str(self.key)],
                                   input=signing_input.encode(), check=True, capture_output=True).stdout
        return f"{signing_input}.{_b64url(signature)}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tuple[RunningRegistry, TokenServer]]:
    root = tmp_path_factory.mktemp("token-registry")
    tokens = TokenServer(root)
    try:
        with start_registry(root, auth="custom", auth_yaml=f"""\
auth:
  token:
    realm: {tokens.realm}
    service: {tokens.service}
    issuer: {tokens.issuer}
    rootcertbundle: {tokens.cert}
""") as running:
            yield running, tokens
    finally:
        tokens.close()


def _auth() -> Auth:
    return Auth(USER, PASSWORD)


def _skopeo_inspect(layout: Path) -> dict:
    skopeo = require_tool("skopeo", "skopeo")
    done = subprocess.run([skopeo, "inspect", f"oci:{layout}"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


# ---------------------------------------------------------------------------------------------
# References and transport


def test_reference_parse() -> None:
    digest = "sha256:" + "ab" * 32
    ref = Reference.parse(f"127.0.0.1:5000/models/iris:1@{digest}")
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == ("127.0.0.1:5000", "models/iris", "1", digest)
    assert (ref.host, ref.port, ref.is_loopback) == ("127.0.0.1", 5000, True)
    assert str(ref) == f"127.0.0.1:5000/models/iris:1@{digest}"

    ecr = Reference.parse("123456789012.dkr.ecr.eu-west-1.amazonaws.com/models/iris:2024-05-01.1")
    assert (ecr.registry, ecr.repository, ecr.tag, ecr.digest, ecr.port) == (
        "123456789012.dkr.ecr.eu-west-1.amazonaws.com", "models/iris", "2024-05-01.1", None, None)
    assert registry.is_ecr_host(ecr.registry) and not ecr.is_loopback
    assert Reference.parse("localhost/base").registry == "localhost"
    v6 = Reference.parse(f"[::1]:5000/base@{digest}")
    assert (v6.host, v6.port, v6.tag, v6.is_loopback) == ("::1", 5000, None, True)
    assert not Reference.parse("registry.example.com:5000/x:1").is_loopback

    for text, words in [
        ("iris:1", "names no registry"),
        ("models/iris:1", "names no registry"),
        ("https://127.0.0.1:5000/iris:1", "without a scheme"),
        ("127.0.0.1:5000/Models/iris:1", "not a valid repository"),
        ("127.0.0.1:5000/iris:bad/tag", "not a valid repository"),
        ("127.0.0.1:5000/iris:" + "t" * 129, "not a valid tag"),
        ("127.0.0.1:5000/iris@sha256:abc", "is not a digest"),
        ("127.0.0.1:5000/iris@sha512:" + "a" * 128, "only sha256"),
        ("127.0.0.1:99999/iris:1", "out of range"),
    ]:
        with pytest.raises(InvalidReference, match=words):
            Reference.parse(text)


def test_plain_http_is_refused_for_non_loopback_before_any_network(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("a connection was attempted")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    layout = make_layout(tmp_path / "image", {"a": b"a"})
    for host in ("registry.example.com:5000", "10.0.0.8:5000", "[2001:db8::1]:5000", "127.0.0.1.nip.io"):
        with pytest.raises(InsecureTransportError, match=re.escape(host) + ".*only allowed for loopback"):
            push_layout(layout.path, f"{host}/models/x:1", _auth(), plain_http=True, quiet=True)
        with pytest.raises(InsecureTransportError):
            pull(f"{host}/models/x:1", tmp_path / "out", plain_http=True)
    # Loopback registries are plain HTTP by default, everything else HTTPS.
    assert RegistryClient("127.0.0.2:5000", "x").scheme == "http"
    assert RegistryClient("localhost:5000", "x").scheme == "http"
    assert RegistryClient("[::1]:5000", "x").scheme == "http"
    assert RegistryClient("127.0.0.1:5000", "x", plain_http=False).scheme == "https"
    assert RegistryClient("registry.example.com", "x").scheme == "https"


def test_auth_never_shows_the_password() -> None:
    auth = _auth()
    assert PASSWORD not in repr(auth) and PASSWORD not in str(auth)
    assert "ecr_credentials" in repr(Auth(provider=registry.ecr_credentials))
    env_auth = Auth.from_env("127.0.0.1:5000", env={"ML_REGISTRY_USERNAME": "u", "ML_REGISTRY_PASSWORD": "p"})
    assert env_auth.credentials("127.0.0.1:5000") == ("u", "p")
    assert Auth.from_env("127.0.0.1:5000", env={}).credentials("127.0.0.1:5000") is None
    # ECR hosts get the (lazy) ECR provider; boto3 is not imported until a registry asks.
    assert "provider" in repr(Auth.from_env("123456789012.dkr.ecr.us-east-1.amazonaws.com", env={}))


def test_challenge_parsing() -> None:
    parsed = registry.parse_challenges([
        'Bearer realm="https://auth.example.com/token",service="registry.example.com",'
        'scope="repository:models/iris:pull,push repository:base:pull",error="insufficient_scope"',
        'Basic realm="a \\"quoted\\" realm"',
    ])
    assert parsed == [
        ("bearer", {"realm": "https://auth.example.com/token", "service": "registry.example.com",
                    "scope": "repository:models/iris:pull,push repository:base:pull",
                    "error": "insufficient_scope"}),
        ("basic", {"realm": 'a "quoted" realm'}),
    ]


# ---------------------------------------------------------------------------------------------
# Basic auth registry: push, pull, incremental push, errors


def test_push_pull_roundtrip_with_basic_auth(basic_registry: RunningRegistry, tmp_path: Path) -> None:
    layout = make_layout(tmp_path / "image", {"deps": os.urandom(200_000), "code": os.urandom(3_000)})
    assert _skopeo_inspect(layout.path)["Digest"] == layout.manifest_digest  # the test's layout is valid

    ref = basic_registry.ref("models/roundtrip", "1")
    pushed = push_layout(layout.path, ref, _auth(), quiet=True)
    assert pushed.manifest_digest == layout.manifest_digest
    assert pushed.reference.digest == layout.manifest_digest
    assert pushed.uploaded_count == 3 and pushed.skipped_count == 0
    assert pushed.uploaded_bytes == sum(size for _, size in layout.layers) + layout.config[1]

    dest = tmp_path / "pulled"
    pulled = pull(ref, dest, _auth(), quiet=True)
    assert pulled.manifest_digest == layout.manifest_digest and pulled.index_digest is None
    assert pulled.downloaded_count == 3
    assert (dest / "blobs" / "sha256" / layout.manifest_digest.split(":")[1]).read_bytes() == \
        layout.blob(layout.manifest_digest).read_bytes()
    for digest, size in layout.layers + [layout.config]:
        assert file_digest(dest / "blobs" / "sha256" / digest.split(":")[1]) == digest
        assert (dest / "blobs" / "sha256" / digest.split(":")[1]).stat().st_size == size
    index = json.loads((dest / "index.json").read_text())
    assert index["manifests"][0]["digest"] == layout.manifest_digest
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "1"
    inspected = _skopeo_inspect(dest)
    assert inspected["Digest"] == layout.manifest_digest
    assert inspected["Layers"] == [d for d, _ in layout.layers]

    # By digest, and tag@digest: the manifest is fetched by digest and checked.
    pinned = f"{basic_registry.host}/models/roundtrip:1@{layout.manifest_digest}"
    assert pull(pinned, tmp_path / "pinned", _auth(), quiet=True).manifest_digest == layout.manifest_digest
    # Pulling into the same layout again reuses every blob.
    again = pull(ref, dest, _auth(), quiet=True)
    assert again.downloaded_count == 0 and {b.action for b in again.blobs} == {"present"}


def test_wrong_or_missing_credentials(basic_registry: RunningRegistry, tmp_path: Path) -> None:
    layout = make_layout(tmp_path / "image", {"a": b"a" * 100})
    ref = basic_registry.ref("models/denied")
    with pytest.raises(AuthenticationError) as wrong:
        push_layout(layout.path, ref, Auth(USER, "not-the-password"), quiet=True)
    message = str(wrong.value)
    assert basic_registry.host in message and "models/denied" in message
    assert "HTTP 401" in message and "the registry refused user 'ci-user'" in message
    assert "not-the-password" not in message and wrong.value.status == 401

    with pytest.raises(AuthenticationError, match="needs credentials.*--username"):
        push_layout(layout.path, ref, Auth(), quiet=True)
    # A GET's answer carries the registry's JSON error, which the message quotes.
    with pytest.raises(AuthenticationError) as pulled:
        pull(ref, tmp_path / "out", Auth(USER, "nope"))
    assert "getting manifest 1 at " + ref.rsplit(":", 1)[0] in str(pulled.value)
    assert "HTTP 401 Unauthorized: UNAUTHORIZED: authentication required" in str(pulled.value)
    assert pulled.value.errors[0]["code"] == "UNAUTHORIZED"


def test_unchanged_push_uploads_nothing_and_one_changed_layer_uploads_only_it(
        basic_registry: RunningRegistry, tmp_path: Path) -> None:
    deps, base = os.urandom(300_000), os.urandom(100_000)
    first = make_layout(tmp_path / "v1", {"base": base, "deps": deps, "code": b"print('v1')\n" * 50})
    ref = basic_registry.ref("models/incremental", "1")
    assert push_layout(first.path, ref, _auth(), quiet=True).uploaded_count == 4

    unchanged = push_layout(first.path, ref, _auth(), quiet=True)
    assert unchanged.uploaded_count == 0 and unchanged.uploaded_bytes == 0
    assert unchanged.skipped_count == 4
    assert unchanged.skipped_bytes == sum(s for _, s in first.layers) + first.config[1]

    second = make_layout(tmp_path / "v2", {"base": base, "deps": deps, "code": b"print('v2')\n" * 50})
    assert second.layers[:2] == first.layers[:2] and second.layers[2] != first.layers[2]
    changed = push_layout(second.path, basic_registry.ref("models/incremental", "2"), _auth(), quiet=True)
    uploaded = {b.digest for b in changed.blobs if b.action == "uploaded"}
    assert uploaded == {second.layers[2][0], second.config[0]}
    assert changed.uploaded_bytes == second.layers[2][1] + second.config[1]
    assert changed.skipped_count == 2
    assert changed.summary()["uploaded_bytes"] == changed.uploaded_bytes

    client = RegistryClient(basic_registry.host, "models/incremental", _auth())
    data, media_type, announced = client.get_manifest("2")
    assert (_digest(data), media_type, announced) == (second.manifest_digest, MANIFEST, second.manifest_digest)


def test_cross_repository_mount(basic_registry: RunningRegistry, tmp_path: Path) -> None:
    layout = make_layout(tmp_path / "image", {"base": os.urandom(50_000), "code": b"x"})
    push_layout(layout.path, basic_registry.ref("models/source"), _auth(), quiet=True)
    mounted = push_layout(layout.path, basic_registry.ref("models/target"), _auth(), quiet=True,
                          mount_from=["models/elsewhere", "models/source"])
    assert mounted.mounted_count == 3 and mounted.uploaded_bytes == 0
    assert pull(basic_registry.ref("models/target"), tmp_path / "out", _auth(), quiet=True).downloaded_count == 3


def test_a_second_repository_mounts_what_its_namespace_already_has(basic_registry: RunningRegistry,
                                                                   tmp_path: Path) -> None:
    # Two models sharing a big layer (torch): the second push mounts it from the first model's
    # repository (found in the catalog) and uploads only its own.
    shared = os.urandom(60_000)
    first = make_layout(tmp_path / "first", {"torch": shared, "code": os.urandom(100)})
    second = make_layout(tmp_path / "second", {"torch": shared, "code": os.urandom(100)})
    push_layout(first.path, basic_registry.ref("shared-ns/first"), _auth(), quiet=True)
    pushed = push_layout(second.path, basic_registry.ref("shared-ns/second"), _auth(), quiet=True)
    assert pushed.mounted_count == 1
    assert sum(b.size for b in pushed.blobs if b.action == "mounted") > 60_000 > 50 * pushed.uploaded_bytes
    assert pull(basic_registry.ref("shared-ns/second"), tmp_path / "out", _auth(), quiet=True).downloaded_count == 3


def test_large_blob_is_streamed_with_progress(basic_registry: RunningRegistry, tmp_path: Path,
                                              capfd: pytest.CaptureFixture[str]) -> None:
    size = 24 << 20
    layout = make_layout(tmp_path / "image", {"small": b"s"}, big=size, gzipped=False)
    ref = basic_registry.ref("models/large")
    tracemalloc.start()
    try:
        pushed = push_layout(layout.path, ref, _auth())
        _, push_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        pulled = pull(ref, tmp_path / "out", _auth())
        _, pull_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert pushed.uploaded_bytes > size and pulled.downloaded_bytes == pushed.uploaded_bytes
    assert push_peak < 8 << 20 and pull_peak < 8 << 20, (push_peak, pull_peak)
    err = capfd.readouterr().err
    big_digest = layout.layers[-1][0]
    assert f"models/large {big_digest[:19]} uploading 25%" in err
    assert f"models/large {big_digest[:19]} downloading 75%" in err
    assert "done" in err and "MB/s" in err
    assert layout.layers[0][0][:19] not in err  # small blobs make no noise


def test_pull_cache_dir_is_reused_and_verified(anon_registry: RunningRegistry, tmp_path: Path) -> None:
    layout = make_layout(tmp_path / "image", {"a": os.urandom(10_000), "b": os.urandom(20_000)})
    ref = anon_registry.ref("base/debian", "bookworm")
    push_layout(layout.path, ref, quiet=True)  # anonymous
    cache = tmp_path / "cache"
    first = pull(f"{ref}@{layout.manifest_digest}", tmp_path / "one", cache_dir=cache, quiet=True)
    assert first.downloaded_count == 3
    second = pull(f"{ref}@{layout.manifest_digest}", tmp_path / "two", cache_dir=cache, quiet=True)
    assert second.downloaded_count == 0 and {b.action for b in second.blobs} == {"cached"}
    # A damaged cache entry is noticed and fetched again.
    damaged = cache / "blobs" / "sha256" / layout.layers[0][0].split(":")[1]
    damaged.unlink()
    damaged.write_bytes(b"rotten")
    third = pull(ref, tmp_path / "three", cache_dir=cache, quiet=True)
    assert [b.digest for b in third.blobs if b.action == "downloaded"] == [layout.layers[0][0]]
    assert file_digest(damaged) == layout.layers[0][0]
    assert _skopeo_inspect(tmp_path / "three")["Digest"] == layout.manifest_digest


def test_pull_digest_mismatch_and_unknown(anon_registry: RunningRegistry, tmp_path: Path) -> None:
    layout = make_layout(tmp_path / "image", {"a": b"a"})
    push_layout(layout.path, anon_registry.ref("base/pinned"), quiet=True)
    wrong = "sha256:" + "0" * 64
    with pytest.raises(RegistryError) as unknown:
        pull(f"{anon_registry.ref('base/pinned')}@{wrong}", tmp_path / "out")
    assert "HTTP 404" in str(unknown.value) and "MANIFEST_UNKNOWN" in str(unknown.value)
    assert anon_registry.host in str(unknown.value) and "base/pinned" in str(unknown.value)
    # Callers test the typed status and codes, never the message.
    assert unknown.value.status == 404 and unknown.value.not_found
    assert "MANIFEST_UNKNOWN" in {e["code"] for e in unknown.value.errors}
    with pytest.raises(RegistryError, match="HTTP 404.*NAME_UNKNOWN|HTTP 404.*MANIFEST_UNKNOWN") as absent:
        pull(anon_registry.ref("base/absent"), tmp_path / "out")
    assert absent.value.not_found
    # Pushing a layout to a reference that pins another digest fails before anything is sent.
    with pytest.raises(DigestMismatchError, match="holds manifest"):
        push_layout(layout.path, f"{anon_registry.ref('base/pinned', '2')}@{wrong}", quiet=True)


def test_index_picks_linux_amd64_and_layout_index_of_one_pushes(anon_registry: RunningRegistry,
                                                                tmp_path: Path) -> None:
    amd64 = make_layout(tmp_path / "amd64", {"a": b"amd64"})
    arm64 = make_layout(tmp_path / "arm64", {"a": b"arm64"})
    repo = "base/multi"
    # Push by digest only (no tag), then an index naming both.
    for image in (amd64, arm64):
        result = push_layout(image.path, f"{anon_registry.host}/{repo}@{image.manifest_digest}", quiet=True)
        assert result.manifest_digest == image.manifest_digest
    def entry(image: Layout, platform: Dict[str, str]) -> Dict[str, object]:
        size = image.blob(image.manifest_digest).stat().st_size
        return {"mediaType": MANIFEST, "digest": image.manifest_digest, "size": size, "platform": platform}

    index = json.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": [
        entry(arm64, {"os": "linux", "architecture": "arm64", "variant": "v8"}),
        entry(amd64, {"os": "linux", "architecture": "amd64"}),
    ]}).encode()
    client = RegistryClient(anon_registry.host, repo, push=True)
    assert client.put_manifest("multi", index, INDEX) == _digest(index)

    pulled = pull(f"{anon_registry.host}/{repo}:multi@{_digest(index)}", tmp_path / "out", quiet=True)
    assert pulled.manifest_digest == amd64.manifest_digest and pulled.index_digest == _digest(index)
    arm = pull(f"{anon_registry.host}/{repo}:multi", tmp_path / "arm", platform="linux/arm64", quiet=True)
    assert arm.manifest_digest == arm64.manifest_digest
    with pytest.raises(RegistryError, match="no linux/s390x image.*linux/amd64, linux/arm64/v8"):
        pull(f"{anon_registry.host}/{repo}:multi", tmp_path / "none", platform="linux/s390x")
    assert _skopeo_inspect(tmp_path / "out")["Digest"] == amd64.manifest_digest

    # A layout whose index.json names an image index holding one manifest: that manifest is pushed.
    nested_index = {"schemaVersion": 2, "mediaType": INDEX, "manifests": [
        {"mediaType": MANIFEST, "digest": amd64.manifest_digest,
         "size": amd64.blob(amd64.manifest_digest).stat().st_size}]}
    digest, size = _json_blob(amd64.path, nested_index)
    (amd64.path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": INDEX, "digest": digest, "size": size}]}))
    nested = push_layout(amd64.path, f"{anon_registry.host}/{repo}:nested", quiet=True)
    assert nested.manifest_digest == amd64.manifest_digest and nested.uploaded_count == 0


def test_docker_v2_media_types(anon_registry: RunningRegistry, tmp_path: Path) -> None:
    layout = make_layout(tmp_path / "image", {"a": os.urandom(1000)}, docker_types=True)
    pushed = push_layout(layout.path, anon_registry.ref("base/docker"), quiet=True)
    assert pushed.manifest_media_type == registry.MEDIA_TYPE_DOCKER_MANIFEST
    pulled = pull(anon_registry.ref("base/docker"), tmp_path / "out", quiet=True)
    assert pulled.manifest_digest == layout.manifest_digest
    assert pulled.manifest_media_type == registry.MEDIA_TYPE_DOCKER_MANIFEST


def test_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(registry.LayoutError, match="not an OCI image layout"):
        registry.read_layout(tmp_path)
    layout = make_layout(tmp_path / "image", {"a": b"a", "b": b"b"})
    layout.blob(layout.layers[1][0]).write_bytes(b"short")
    with pytest.raises(registry.LayoutError, match=f"blob {layout.layers[1][0]} is 5 bytes"):
        registry.read_layout(layout.path)
    layout.blob(layout.layers[1][0]).unlink()
    with pytest.raises(registry.LayoutError, match="is missing"):
        registry.read_layout(layout.path)


def test_https_registry(tls_registry: Tuple[RunningRegistry, Path], tmp_path: Path) -> None:
    running, ca_file = tls_registry
    context = ssl.create_default_context(cafile=str(ca_file))
    layout = make_layout(tmp_path / "image", {"a": os.urandom(2000)})
    ref = running.ref("models/tls")
    pushed = push_layout(layout.path, ref, _auth(), plain_http=False, ssl_context=context, quiet=True)
    assert pushed.uploaded_count == 2
    pulled = pull(ref, tmp_path / "out", _auth(), plain_http=False, ssl_context=context, quiet=True)
    assert pulled.manifest_digest == layout.manifest_digest
    # The system's store does not know the test's certificate: verification fails, clearly.
    with pytest.raises(RegistryError, match=f"{running.host}/models/tls: cannot talk to {running.host}.*"
                                            "CERTIFICATE_VERIFY_FAILED"):
        pull(ref, tmp_path / "untrusted", _auth(), plain_http=False)
    # Plain HTTP to an HTTPS registry: the registry's answer is quoted.
    with pytest.raises(RegistryError, match="HTTP 400.*HTTPS"):
        pull(ref, tmp_path / "plain", _auth())
    # The command line trusts what SSL_CERT_FILE names.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "SSL_CERT_FILE": str(ca_file),
           "ML_REGISTRY_USERNAME": USER, "ML_REGISTRY_PASSWORD": PASSWORD}
    done = subprocess.run([sys.executable, "-m", "ml_image.registry", "pull", ref, str(tmp_path / "cli"),
                           "--https"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["digest"] == layout.manifest_digest


# ---------------------------------------------------------------------------------------------
# Bearer tokens: the real registry with `auth: token`


def test_bearer_token_flow_against_real_registry(token_registry: Tuple[RunningRegistry, TokenServer],
                                                 tmp_path: Path) -> None:
    running, tokens = token_registry
    layout = make_layout(tmp_path / "image", {"deps": os.urandom(40_000), "code": b"c" * 10})
    ref = running.ref("models/tokened")
    auth = _auth()
    pushed = push_layout(layout.path, ref, auth, quiet=True)
    assert pushed.uploaded_count == 3
    # Two tokens for the whole push, with the basic credentials: one to read the catalog (the
    # sibling repositories to mount from) and one for pull and push, asked for up front.
    assert tokens.requests == [(USER, ["registry:catalog:*", "repository:models/tokened:pull,push"]),
                               (USER, ["repository:models/tokened:pull,push"])]
    assert auth.token_requests == 2

    # The token is cached per scope: pulling with the same Auth asks for a pull-only token once.
    pulled = pull(ref, tmp_path / "out", auth, quiet=True)
    assert pulled.manifest_digest == layout.manifest_digest
    assert tokens.requests[2:] == [(USER, ["repository:models/tokened:pull"])]
    pull(ref, tmp_path / "again", auth, quiet=True)
    assert len(tokens.requests) == 3
    again = push_layout(layout.path, ref, auth, quiet=True)
    assert again.uploaded_count == 0 and len(tokens.requests) == 3

    # A mount asks for pull on the source repository too.
    mounted = push_layout(layout.path, running.ref("models/tokened-copy"), auth, quiet=True,
                          mount_from=["models/tokened"])
    assert mounted.mounted_count == 3
    both = ["repository:models/tokened-copy:pull,push", "repository:models/tokened:pull"]
    assert (USER, both) in tokens.requests

    with pytest.raises(AuthenticationError) as refused:
        push_layout(layout.path, ref, Auth(USER, "wrong-password"), quiet=True)
    assert "token server refused user 'ci-user'" in str(refused.value)
    assert "HTTP 401" in str(refused.value) and "wrong-password" not in str(refused.value)
    # Anonymous: the token server gives a token without access, and the registry says no.
    with pytest.raises(AuthenticationError, match="HTTP 401.*needs credentials"):
        pull(ref, tmp_path / "anon", Auth())


# ---------------------------------------------------------------------------------------------
# A fake registry for what real ones rarely do


class FakeRegistry:
    """In-memory distribution API: relative Location without '?', optional tampering and errors."""

    def __init__(self) -> None:
        self.blobs: Dict[str, bytes] = {}
        self.manifests: Dict[str, Tuple[bytes, str]] = {}
        self.uploads: Dict[str, bytearray] = {}
        self.tamper_blob = False
        self.wrong_manifest_digest = False
        self.reject_manifest = False
        self.bearer = False
        self.token_requests = 0
        self.log: List[Tuple[str, str]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, body: bytes = b"", headers: Optional[Dict[str, str]] = None) -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _authorized(self) -> bool:
                if not fake.bearer or self.headers.get("Authorization") == "Bearer fake-token":
                    return True
                self._send(401, json.dumps({"errors": [{"code": "UNAUTHORIZED", "message": "token"}]}).encode(),
                           {"WWW-Authenticate": f'Bearer realm="http://{self.headers["Host"]}/token",'
                                                'service="fake",scope="repository:r:pull"'})
                return False

            def do_GET(self) -> None:
                self._route()

            def do_HEAD(self) -> None:
                self._route()

            def do_POST(self) -> None:
                self._route()

            def do_PUT(self) -> None:
                self._route()

            def _route(self) -> None:
                parts = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(parts.query))
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fake.log.append((self.command, parts.path))
                if parts.path == "/token":
                    fake.token_requests += 1
                    return self._send(200, json.dumps({"token": "fake-token"}).encode())
                if not self._authorized():
                    return
                match = re.match(r"/v2/(.+)/(blobs|manifests)/(uploads/)?([^/]*)\Z", parts.path)
                if not match:
                    return self._send(404)
                _, kind, upload, ref = match.groups()
                if kind == "blobs" and upload and self.command == "POST":
                    session = uuid.uuid4().hex
                    fake.uploads[session] = bytearray()
                    return self._send(202, headers={"Location": f"/v2/r/blobs/uploads/{session}"})
                if kind == "blobs" and upload and self.command == "PUT":
                    if _digest(body) != query["digest"]:
                        return self._send(400, json.dumps({"errors": [{"code": "DIGEST_INVALID",
                                                                       "message": "digest mismatch"}]}).encode())
                    fake.blobs[query["digest"]] = body
                    return self._send(201, headers={"Location": f"/v2/r/blobs/{query['digest']}"})
                if kind == "blobs":
                    if ref not in fake.blobs:
                        return self._send(404)
                    data = fake.blobs[ref]
                    if fake.tamper_blob:
                        data = data[:-1] + bytes([data[-1] ^ 1])
                    return self._send(200, data)
                if self.command == "PUT":
                    if fake.reject_manifest:
                        return self._send(400, json.dumps({"errors": [
                            {"code": "MANIFEST_BLOB_UNKNOWN", "message": "blob unknown to registry",
                             "detail": "sha256:..."}]}).encode())
                    fake.manifests[ref] = (body, self.headers["Content-Type"])
                    digest = "sha256:" + "f" * 64 if fake.wrong_manifest_digest else _digest(body)
                    return self._send(201, headers={"Docker-Content-Digest": digest})
                if ref not in fake.manifests:
                    return self._send(404, json.dumps({"errors": [{"code": "MANIFEST_UNKNOWN",
                                                                   "message": "manifest unknown"}]}).encode())
                data, media_type = fake.manifests[ref]
                return self._send(200, data, {"Content-Type": media_type})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def fake() -> Iterator[FakeRegistry]:
    server = FakeRegistry()
    try:
        yield server
    finally:
        server.close()


def test_fake_registry_relative_locations_and_tampering(fake: FakeRegistry, tmp_path: Path) -> None:
    layout = make_layout(tmp_path / "image", {"a": os.urandom(5000), "b": b"b"})
    pushed = push_layout(layout.path, f"{fake.host}/r:1", quiet=True)  # relative Location, no '?'
    assert pushed.uploaded_count == 3 and set(fake.blobs) == {d for d, _ in layout.layers} | {layout.config[0]}
    assert pull(f"{fake.host}/r:1", tmp_path / "ok", quiet=True).manifest_digest == layout.manifest_digest

    fake.tamper_blob = True
    with pytest.raises(DigestMismatchError, match="does not match"):
        pull(f"{fake.host}/r:1", tmp_path / "bad", quiet=True)
    assert not [p for p in (tmp_path / "bad" / "blobs" / "sha256").iterdir() if p.name.endswith("partial")]
    fake.tamper_blob = False

    # A manifest served for a digest it does not have.
    other = "sha256:" + "1" * 64
    fake.manifests[other] = fake.manifests["1"]
    with pytest.raises(DigestMismatchError, match=f"has digest {layout.manifest_digest}, expected {other}"):
        pull(f"{fake.host}/r@{other}", tmp_path / "bad2")

    fake.wrong_manifest_digest = True
    with pytest.raises(DigestMismatchError, match="stored manifest 1 as sha256:ffff"):
        push_layout(layout.path, f"{fake.host}/r:1", quiet=True)
    fake.wrong_manifest_digest = False

    fake.reject_manifest = True
    with pytest.raises(RegistryError) as rejected:
        push_layout(layout.path, f"{fake.host}/r:1", quiet=True)
    assert str(rejected.value) == (f"putting manifest 1 at {fake.host}/r failed: HTTP 400 Bad Request: "
                                   "MANIFEST_BLOB_UNKNOWN: blob unknown to registry")


def test_fake_registry_bearer_token_is_cached(fake: FakeRegistry, tmp_path: Path) -> None:
    fake.bearer = True
    layout = make_layout(tmp_path / "image", {"a": b"a", "b": b"b"})
    auth = Auth()  # anonymous tokens
    push_layout(layout.path, f"{fake.host}/r:1", auth, quiet=True)
    assert fake.token_requests == 2  # the catalog (repositories to mount from), then the push
    pull(f"{fake.host}/r:1", tmp_path / "out", auth, quiet=True)
    assert fake.token_requests == 3  # another scope: pull only
    pull(f"{fake.host}/r:1", tmp_path / "again", auth, quiet=True)
    assert fake.token_requests == 3


def test_connection_refused_names_the_registry(tmp_path: Path) -> None:
    port = free_port()
    with pytest.raises(RegistryError, match=f"127.0.0.1:{port}/models/x: cannot talk to 127.0.0.1:{port}"):
        pull(f"127.0.0.1:{port}/models/x:1", tmp_path / "out", timeout=5)


# ---------------------------------------------------------------------------------------------
# Command line


def test_cli_push_and_pull(basic_registry: RunningRegistry, tmp_path: Path) -> None:
    layout = make_layout(tmp_path / "image", {"a": os.urandom(1000)})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("ML_REGISTRY_USERNAME", None)
    env.pop("ML_REGISTRY_PASSWORD", None)

    def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "ml_image.registry", *args], input=stdin, env=env,
                              capture_output=True, text=True, timeout=60)

    ref = basic_registry.ref("models/cli", "7")
    done = run("push", str(layout.path), ref, "--username", USER, "--password-stdin",
               "--result-file", str(tmp_path / "pushed.json"), stdin=PASSWORD + "\n")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert json.loads((tmp_path / "pushed.json").read_text()) == summary
    assert summary["digest"] == layout.manifest_digest and summary["uploaded"] == 2
    assert PASSWORD not in done.stdout + done.stderr

    done = run("pull", ref, str(tmp_path / "out"), "--username", USER, "--password-stdin", stdin=PASSWORD)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["digest"] == layout.manifest_digest

    done = run("push", str(layout.path), ref, "--username", USER, "--password-stdin", stdin="wrong\n")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: ") and "HTTP 401" in done.stderr and "wrong" not in done.stdout

    env.update(ML_REGISTRY_USERNAME=USER, ML_REGISTRY_PASSWORD=PASSWORD)
    done = run("pull", ref, str(tmp_path / "env"))
    assert done.returncode == 0, done.stderr

    done = run("push", str(layout.path), "models/cli:7")
    assert done.returncode == 1 and "names no registry" in done.stderr
    done = run("push", str(layout.path), "registry.example.com/models/cli:7", "--plain-http")
    assert done.returncode == 1 and "only allowed for loopback" in done.stderr
