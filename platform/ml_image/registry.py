"""Pushes and pulls OCI images over the OCI distribution API, without a daemon; standard library only.

    python -m ml_image.registry push dist/.../image 127.0.0.1:5000/models/iris:1
    python -m ml_image.registry pull 127.0.0.1:5000/debian:bookworm@sha256:... base-layout

`push_layout` reads an OCI image layout (oci-layout, index.json, blobs/sha256/...), asks the
registry which blobs it already has (HEAD) and uploads only the others (POST an upload session,
then one monolithic PUT streamed from disk), then puts the manifest under the tag and checks the
digest the registry reports. After a one-line code change only the code layer, the config and the
manifest travel. `pull` fetches a manifest (an index or manifest list resolves to one platform,
linux/amd64 by default), checks it against the reference's digest, and streams the config and
layers into an OCI image layout, verifying each blob's sha256, reusing blobs from a
content-addressed cache directory.

Transport: HTTPS, except for loopback registries (127.0.0.0/8, ::1, localhost), which are spoken
to over plain HTTP unless HTTPS is asked for; plain HTTP to any other host is refused before a
connection is made (and so is a plain-HTTP token realm or redirect to such a host). HTTPS
verifies certificates against the system's store (SSL_CERT_FILE and SSL_CERT_DIR are honoured),
or against an `ssl_context` passed in.

Authentication: anonymous, HTTP Basic, or the Bearer token flow (401 with `WWW-Authenticate:
Bearer realm=...,service=...,scope=...`; the token is fetched from the realm, with Basic
credentials if there are any, and cached per scope). Credentials come from arguments, from
ML_REGISTRY_USERNAME / ML_REGISTRY_PASSWORD, or from a provider called only when the registry
asks for them: `ecr_credentials` (Amazon ECR, through boto3) is one. Secrets never appear in a
message, a log line or a repr.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import hashlib
import http.client
import ipaddress
import json
import os
import re
import shutil
import ssl
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from ml_image.layers import file_digest

MEDIA_TYPE_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_TYPE_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_MEDIA_TYPES = (MEDIA_TYPE_OCI_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST)
INDEX_MEDIA_TYPES = (MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_DOCKER_LIST)
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"

USERNAME_ENV = "ML_REGISTRY_USERNAME"
PASSWORD_ENV = "ML_REGISTRY_PASSWORD"

USER_AGENT = "ml-platform-registry/1"
_CHUNK = 1 << 20
_PROGRESS_MIN_BYTES = 1 << 20  # progress lines only for blobs larger than this
_MAX_MANIFEST_BYTES = 4 << 20  # the distribution registry's own limit
_MAX_ERROR_BODY = 64 << 10
_MAX_REDIRECTS = 5

_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}\Z")
_ANY_DIGEST_RE = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+\Z")
_REPO_COMPONENT_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*\Z")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")
_REGISTRY_RE = re.compile(
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)(?::(?P<port>[0-9]{1,5}))?\Z"
)
_ECR_HOST_RE = re.compile(
    r"(?P<account>[0-9]{12})\.dkr\.ecr(?:-fips)?\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?\Z"
)


# ---------------------------------------------------------------------------------------------
# Errors


class RegistryError(Exception):
    """Anything that went wrong talking to a registry or reading a layout; the message says what."""

    def __init__(self, message: str, *, registry: Optional[str] = None, repository: Optional[str] = None,
                 status: Optional[int] = None, errors: Sequence[Mapping[str, Any]] = ()) -> None:
        super().__init__(message)
        self.registry = registry
        self.repository = repository
        self.status = status
        self.errors = list(errors)  # the registry's {"code", "message", "detail"} entries


    @property
    def not_found(self) -> bool:
        """The registry says the manifest, blob or repository does not exist."""
        codes = {e.get("code") for e in self.errors}
        return self.status == 404 or bool(codes & {"MANIFEST_UNKNOWN", "BLOB_UNKNOWN", "NAME_UNKNOWN"})


class AuthenticationError(RegistryError):
    """The registry (or its token server) wants credentials, or refused the ones it was given."""


class InsecureTransportError(RegistryError):
    """Plain HTTP to a host that is not a loopback address."""


class DigestMismatchError(RegistryError):
    """Content whose sha256 is not the digest it was asked for or announced with."""


class LayoutError(RegistryError):
    """The OCI image layout on disk is missing something or is inconsistent."""


class InvalidReference(RegistryError, ValueError):
    """An image reference that cannot be parsed or is not complete enough for the operation."""


# ---------------------------------------------------------------------------------------------
# References and transport rules


def is_loopback_host(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1 (names other than `localhost` are not resolved)."""
    name = host.strip().strip("[]").rstrip(".").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _split_hostport(registry: str) -> Tuple[str, Optional[int]]:
    match = _REGISTRY_RE.match(registry)
    if not match:
        raise InvalidReference(f"{registry!r} is not a registry host[:port]")
    port = match.group("port")
    return match.group("host").strip("[]"), int(port) if port else None


@dataclass(frozen=True)
class Reference:
    """`registry[:port]/repository[:tag][@sha256:...]`. The registry is always explicit."""

    registry: str
    repository: str
    tag: Optional[str] = None
    digest: Optional[str] = None

    @classmethod
    def parse(cls, text: Union[str, "Reference"]) -> "Reference":
        if isinstance(text, Reference):
            return text
        original = text
        text = text.strip()
        if not text:
            raise InvalidReference("empty image reference")
        if "://" in text:
            raise InvalidReference(f"image reference {original!r}: write it without a scheme "
                                   "(registry[:port]/repository:tag)")
        digest = None
        if "@" in text:
            text, digest = text.split("@", 1)
            if not _DIGEST_RE.match(digest):
                if not digest.startswith("sha256:") and _ANY_DIGEST_RE.match(digest):
                    raise InvalidReference(f"image reference {original!r}: only sha256 digests are supported")
                raise InvalidReference(f"image reference {original!r}: {digest!r} is not a digest "
                                       "(sha256: and 64 lowercase hex digits)")
        registry, slash, rest = text.partition("/")
        if not slash or not ("." in registry or ":" in registry or registry == "localhost"
                             or registry.startswith("[")):
            raise InvalidReference(
                f"image reference {original!r} names no registry; name the registry host, e.g. "
                f"127.0.0.1:5000/{text} or <account>.dkr.ecr.<region>.amazonaws.com/{text} "
                "(no Docker Hub default is applied)")
        _, port = _split_hostport(registry)
        if port is not None and not 0 < port < 65536:
            raise InvalidReference(f"image reference {original!r}: port {port} is out of range")
        tag = None
        colon = rest.rfind(":")
        if colon > rest.rfind("/"):
            rest, tag = rest[:colon], rest[colon + 1:]
            if not _TAG_RE.match(tag):
                raise InvalidReference(f"image reference {original!r}: {tag!r} is not a valid tag")
        components = rest.split("/")
        if not rest or not all(_REPO_COMPONENT_RE.match(c) for c in components):
            raise InvalidReference(
                f"image reference {original!r}: {rest!r} is not a valid repository name "
                "(lowercase letters, digits and . _ - separators, components joined by /)")
        return cls(registry=registry, repository=rest, tag=tag, digest=digest)

    @property
    def host(self) -> str:
        return _split_hostport(self.registry)[0]

    @property
    def port(self) -> Optional[int]:
        return _split_hostport(self.registry)[1]

    @property
    def is_loopback(self) -> bool:
        return is_loopback_host(self.host)

    def replace(self, **changes: Any) -> "Reference":
        return dataclasses.replace(self, **changes)

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def _scheme_for(registry: str, plain_http: Optional[bool]) -> str:
    """None: plain HTTP for loopback registries, HTTPS otherwise. True: plain HTTP, loopback only."""
    loopback = is_loopback_host(_split_hostport(registry)[0])
    if plain_http is None:
        return "http" if loopback else "https"
    if plain_http and not loopback:
        raise InsecureTransportError(
            f"refusing plain HTTP to {registry}: plain HTTP is only allowed for loopback registries "
            "(127.0.0.0/8, ::1, localhost); use HTTPS", registry=registry)
    return "http" if plain_http else "https"


def _check_url_transport(url: str, registry: str, what: str) -> urllib.parse.SplitResult:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RegistryError(f"{what}: {registry} pointed at {_redact_url(url)!r}, which is not an "
                            "http(s) URL", registry=registry)
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise InsecureTransportError(
            f"{what}: refusing plain HTTP to {parts.netloc} (sent there by {registry}); plain HTTP "
            "is only allowed for loopback hosts", registry=registry)
    return parts


def _redact_url(url: str) -> str:
    """A URL for messages: no query (pre-signed URLs carry credentials there) and no userinfo."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


# ---------------------------------------------------------------------------------------------
# Authentication


CredentialsProvider = Callable[[str], Tuple[str, str]]


class Auth:
    """Credentials for registries, plus what they taught us: their challenge and their tokens.

    One object may serve several registries and repositories; tokens are cached per (realm,
    service, scopes) until shortly before they expire. `provider(registry_host)` is called at
    most once per registry, and only when a registry asks for credentials.
    """

    def __init__(self, username: Optional[str] = None, password: Optional[str] = None,
                 provider: Optional[CredentialsProvider] = None) -> None:
        if (username is None) != (password is None):
            raise ValueError("give both a username and a password, or neither")
        self.username = username
        self._password = password
        self._provider = provider
        self._provided: Dict[str, Optional[Tuple[str, str]]] = {}
        self._challenges: Dict[str, Tuple[str, ...]] = {}  # registry -> ("basic",) or ("bearer", realm, service)
        self._tokens: Dict[Tuple[str, str, Tuple[str, ...]], Tuple[str, float]] = {}
        self.token_requests = 0  # how many times a token server was asked (for tests and logs)

    def __repr__(self) -> str:
        if self._provider is not None:
            return f"Auth(provider={getattr(self._provider, '__name__', type(self._provider).__name__)})"
        if self.username is None:
            return "Auth(anonymous)"
        return f"Auth(username={self.username!r}, password=***)"

    @classmethod
    def from_env(cls, registry: str, env: Optional[Mapping[str, str]] = None,
                 boto3_session: Any = None) -> "Auth":
        """ML_REGISTRY_USERNAME/ML_REGISTRY_PASSWORD if set, else ECR for ECR hosts, else anonymous."""
        env = os.environ if env is None else env
        username, password = env.get(USERNAME_ENV), env.get(PASSWORD_ENV)
        if username and password is not None:
            return cls(username, password)
        if is_ecr_host(registry):
            return cls(provider=lambda host: ecr_credentials(host, boto3_session=boto3_session))
        return cls()

    @classmethod
    def for_registry(cls, registry: str, mode: str = "auto", boto3_session: Any = None) -> "Auth":
        """The credentials every push and pull uses (`pants publish`, `pants deploy`, the CLI):
        `auto` is `from_env`; `ecr` always asks ECR, for a registry fronted by ECR's auth."""
        if mode == "ecr":
            return cls(provider=lambda host: ecr_credentials(host, boto3_session=boto3_session))
        if mode != "auto":
            raise ValueError(f"registry auth mode {mode!r}: use `auto` or `ecr`")
        return cls.from_env(registry, boto3_session=boto3_session)

    def credentials(self, registry: str) -> Optional[Tuple[str, str]]:
        if self.username is not None and self._password is not None:
            return self.username, self._password
        if self._provider is None:
            return None
        if registry not in self._provided:
            try:
                user, password = self._provider(_split_hostport(registry)[0])
            except RegistryError:
                raise
            except Exception as e:  # boto3's errors name no secret
                raise AuthenticationError(f"getting credentials for {registry} failed: "
                                          f"{type(e).__name__}: {e}", registry=registry) from e
            self._provided[registry] = (user, password)
        return self._provided[registry]

    def _who(self, registry: str) -> str:
        if self.username is not None:
            return f"user {self.username!r}"
        if self._provider is not None:
            return "the credentials from the provider"
        return "anonymous access"

    def _basic_header(self, registry: str) -> Optional[str]:
        creds = self.credentials(registry)
        if creds is None:
            return None
        raw = f"{creds[0]}:{creds[1]}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


def _parse_challenges(values: Iterable[str]) -> List[Tuple[str, Dict[str, str]]]:
    """`Bearer realm="...",service="...",scope="a b"` -> [("bearer", {...})]; several allowed."""
    item = re.compile(r'[\s,]*([^\s,=]+)\s*(?:=\s*("(?:[^"\\]|\\.)*"|[^\s,]*))?')
    challenges: List[Tuple[str, Dict[str, str]]] = []
    for value in values:
        pos, current = 0, None
        while True:
            match = item.match(value, pos)
            if not match or match.end() == pos:
                break
            pos = match.end()
            name, raw = match.group(1), match.group(2)
            if raw is None:  # a word without "=" starts a challenge
                current = (name.lower(), {})
                challenges.append(current)
            elif current is not None:
                if raw.startswith('"'):
                    raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
                current[1][name.lower()] = raw
    return challenges


# ---------------------------------------------------------------------------------------------
# Amazon ECR (boto3 is imported only when these are called)


def is_ecr_host(registry: str) -> bool:
    try:
        return bool(_ECR_HOST_RE.match(_split_hostport(registry)[0]))
    except InvalidReference:
        return False


def _ecr_client(registry_host: Optional[str], boto3_session: Any) -> Tuple[Any, Optional[str]]:
    match = _ECR_HOST_RE.match(_split_hostport(registry_host)[0]) if registry_host else None
    session = boto3_session
    if session is None:
        try:
            import boto3  # type: ignore[import-not-found]
        except ImportError as e:
            raise AuthenticationError(f"Amazon ECR needs boto3 (pip install boto3): {e}") from e
        session = boto3.session.Session()
    region = match.group("region") if match else None
    client = session.client("ecr", region_name=region) if region else session.client("ecr")
    return client, (match.group("account") if match else None)


def ecr_credentials(registry_host: str, boto3_session: Any = None) -> Tuple[str, str]:
    """("AWS", password) for an ECR registry, from `ecr.get_authorization_token()`.

    The region comes from the host (<account>.dkr.ecr.<region>.amazonaws.com); boto3's usual
    credential chain (environment, profile, instance role) applies. Use as an `Auth` provider:
    `Auth(provider=ecr_credentials)`. The token is valid for 12 hours.
    """
    client, _ = _ecr_client(registry_host, boto3_session)
    data = client.get_authorization_token()["authorizationData"]
    if not data:
        raise AuthenticationError(f"ECR returned no authorization data for {registry_host}",
                                  registry=registry_host)
    user, _, password = base64.b64decode(data[0]["authorizationToken"]).decode().partition(":")
    return user, password


def ensure_ecr_repository(name: str, registry_host: Optional[str] = None, boto3_session: Any = None) -> bool:
    """Create ECR repository `name` unless it exists; True if it was created.

    ECR, unlike most registries, does not create a repository on first push. With
    `registry_host`, its region and account are used; otherwise boto3's defaults.
    """
    client, account = _ecr_client(registry_host, boto3_session)
    kwargs: Dict[str, Any] = {"repositoryName": name}
    if account:
        kwargs["registryId"] = account
    try:
        client.create_repository(**kwargs)
    except client.exceptions.RepositoryAlreadyExistsException:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# HTTP


class _Response:
    """An http.client response plus its connection, closed together."""

    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse, url: str) -> None:
        self.conn, self.resp, self.url = conn, resp, url
        self.status, self.reason, self.headers = resp.status, resp.reason, resp.headers

    def read(self, amount: Optional[int] = None) -> bytes:
        return self.resp.read(amount) if amount is not None else self.resp.read()

    def close(self) -> None:
        try:
            self.resp.close()
        finally:
            self.conn.close()

    def __enter__(self) -> "_Response":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _Progress:
    """Lines on stderr, at a quarter, a half, three quarters and the end, for blobs over 1 MB."""

    def __init__(self, verb: str, where: str, digest: str, size: int, quiet: bool) -> None:
        self.enabled = not quiet and size > _PROGRESS_MIN_BYTES
        self.verb, self.where, self.digest, self.size = verb, where, digest, size
        self.done, self.next_mark, self.start = 0, size / 4, time.monotonic()
        self._say(f"{verb} {size / 1e6:.1f} MB")

    def _say(self, text: str) -> None:
        if self.enabled:
            print(f"registry: {self.where} {self.digest[:19]} {text}", file=sys.stderr, flush=True)

    def update(self, n: int) -> None:
        self.done += n
        while self.enabled and self.done >= self.next_mark and self.next_mark < self.size:
            self._say(f"{self.verb} {100 * self.next_mark / self.size:.0f}%")
            self.next_mark += self.size / 4

    def reset(self) -> None:
        self.done, self.next_mark = 0, self.size / 4

    def finish(self) -> None:
        elapsed = max(time.monotonic() - self.start, 1e-6)
        self._say(f"done, {self.size / 1e6:.1f} MB in {elapsed:.1f} s ({self.size / 1e6 / elapsed:.1f} MB/s)")


class _FileBody:
    """A blob file as a request body: read in chunks, hashed and counted on the way out."""

    def __init__(self, path: Path, progress: _Progress) -> None:
        self.path, self.progress = path, progress
        self.file: Optional[BinaryIO] = None
        self.sha256 = hashlib.sha256()

    def rewind(self) -> None:
        self.close()
        self.file = self.path.open("rb")
        self.sha256 = hashlib.sha256()
        self.progress.reset()

    def read(self, amount: int = _CHUNK) -> bytes:
        assert self.file is not None
        data = self.file.read(amount)
        self.sha256.update(data)
        self.progress.update(len(data))
        return data

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class RegistryClient:
    """The distribution API for one repository of one registry.

    `push=True` asks the token server for pull and push access up front, so one token serves a
    whole push. Raises InsecureTransportError at construction, before any connection, for plain
    HTTP to a host that is not a loopback address.
    """

    def __init__(self, registry: str, repository: str, auth: Optional[Auth] = None, *,
                 plain_http: Optional[bool] = None, push: bool = False, timeout: float = 60.0,
                 ssl_context: Optional[ssl.SSLContext] = None) -> None:
        self.registry, self.repository = registry, repository
        self.scheme = _scheme_for(registry, plain_http)
        self.base = f"{self.scheme}://{registry}"
        self.auth = auth if auth is not None else Auth()
        self.actions = "pull,push" if push else "pull"
        self.timeout = timeout
        self._ssl_context = ssl_context

    @property
    def where(self) -> str:
        return f"{self.registry}/{self.repository}"

    # -- public operations --------------------------------------------------------------------

    def blob_exists(self, digest: str) -> bool:
        # A redirect (to storage) also means the registry has the blob; pre-signed storage URLs
        # are often valid for GET only, so it is not followed.
        with self._request("HEAD", self._path("blobs", digest), what=f"checking blob {digest}",
                           ok=(200, 404, 301, 302, 303, 307, 308)) as resp:
            return resp.status != 404

    def start_upload(self, mount: Optional[str] = None, mount_from: Optional[str] = None) -> Optional[str]:
        """Open an upload session and return its URL; with `mount`, try a cross-repository mount
        of that digest from repository `mount_from` first and return None if it was mounted."""
        path = f"/v2/{self.repository}/blobs/uploads/"
        extra: Tuple[str, ...] = ()
        if mount and mount_from:
            path += "?" + urllib.parse.urlencode({"mount": mount, "from": mount_from})
            extra = (f"repository:{mount_from}:pull",)
        what = f"mounting blob {mount} from {mount_from}" if mount else "starting a blob upload"
        with self._request("POST", path, what=what, ok=(201, 202), headers={"Content-Length": "0"},
                           body=b"", extra_scopes=extra) as resp:
            if resp.status == 201 and mount:
                return None
            location = resp.headers.get("Location")
            if resp.status != 202 or not location:
                raise RegistryError(f"{what} at {self.where}: HTTP {resp.status} without an upload "
                                    "Location", registry=self.registry, repository=self.repository,
                                    status=resp.status)
        return urllib.parse.urljoin(self.base + path, location)

    def cancel_upload(self, location: str) -> None:
        """Best effort: the registry forgets an unused upload session by itself after a while."""
        try:
            with self._request("DELETE", location, what="cancelling an upload", ok=(200, 202, 204, 404)):
                pass
        except RegistryError:
            pass

    def upload_blob(self, digest: str, path: Path, size: int, location: Optional[str] = None,
                    quiet: bool = False) -> None:
        """Monolithic upload of the file at `path`, streamed from disk (never read whole)."""
        if location is None:
            location = self.start_upload()
            assert location is not None
        sep = "&" if "?" in location else "?"
        url = location + sep + urllib.parse.urlencode({"digest": digest})
        progress = _Progress("uploading", self.where, digest, size, quiet)
        body = _FileBody(path, progress)
        try:
            with self._request("PUT", url, what=f"uploading blob {digest}", ok=(201, 204), body=body,
                               headers={"Content-Type": "application/octet-stream",
                                        "Content-Length": str(size)}):
                pass
        finally:
            body.close()
        sent = "sha256:" + body.sha256.hexdigest()
        if sent != digest:
            raise DigestMismatchError(f"blob {digest} changed on disk while it was uploaded "
                                      f"(sent {sent})", registry=self.registry, repository=self.repository)
        progress.finish()

    def put_manifest(self, reference: str, data: bytes, media_type: str) -> Optional[str]:
        """PUT a manifest under a tag or digest; returns the registry's Docker-Content-Digest."""
        with self._request("PUT", self._path("manifests", reference), what=f"putting manifest {reference}",
                           ok=(200, 201, 204), body=data,
                           headers={"Content-Type": media_type, "Content-Length": str(len(data))}) as resp:
            return resp.headers.get("Docker-Content-Digest")

    def get_manifest(self, reference: str,
                     accept: Sequence[str] = MANIFEST_MEDIA_TYPES + INDEX_MEDIA_TYPES,
                     ) -> Tuple[bytes, str, Optional[str]]:
        """(bytes, media type, Docker-Content-Digest header) of a manifest, by tag or digest."""
        with self._request("GET", self._path("manifests", reference), what=f"getting manifest {reference}",
                           headers={"Accept": ", ".join(accept)}, redirects=True) as resp:
            data = resp.read(_MAX_MANIFEST_BYTES + 1)
            if len(data) > _MAX_MANIFEST_BYTES:
                raise RegistryError(f"manifest {reference} at {self.where} is larger than 4 MiB",
                                    registry=self.registry, repository=self.repository)
            content_type = (resp.headers.get("Content-Type") or "").split(";")[0].strip()
            return data, content_type, resp.headers.get("Docker-Content-Digest")

    def download_blob(self, digest: str, dest: Path, size: Optional[int] = None, quiet: bool = False) -> int:
        """Stream a blob into `dest` (through a temporary file beside it), verifying its sha256."""
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.partial")
        progress = _Progress("downloading", self.where, digest, size or 0, quiet)
        sha256, received = hashlib.sha256(), 0
        try:
            with self._request("GET", self._path("blobs", digest), what=f"downloading blob {digest}",
                               redirects=True) as resp, tmp.open("wb") as out:
                while True:
                    chunk = resp.read(_CHUNK)
                    if not chunk:
                        break
                    received += len(chunk)
                    if size is not None and received > size:
                        raise DigestMismatchError(
                            f"blob {digest} from {self.where} is larger than the {size} bytes its "
                            "manifest says", registry=self.registry, repository=self.repository)
                    sha256.update(chunk)
                    out.write(chunk)
                    progress.update(len(chunk))
            got = "sha256:" + sha256.hexdigest()
            if got != digest or (size is not None and received != size):
                raise DigestMismatchError(
                    f"blob {digest} from {self.where} does not match: received {received} bytes with "
                    f"digest {got}", registry=self.registry, repository=self.repository)
            os.replace(tmp, dest)
        finally:
            if tmp.exists():
                tmp.unlink()
        progress.finish()
        return received

    # -- plumbing -----------------------------------------------------------------------------

    def _path(self, kind: str, reference: str) -> str:
        return f"/v2/{self.repository}/{kind}/{urllib.parse.quote(reference, safe=':')}"

    def _scopes(self, extra: Tuple[str, ...]) -> Tuple[str, ...]:
        return (f"repository:{self.repository}:{self.actions}",) + extra

    def _authorization(self, scopes: Tuple[str, ...]) -> Optional[str]:
        challenge = self.auth._challenges.get(self.registry)
        if challenge is None:
            return None  # the first request goes anonymous, and the registry says what it wants
        if challenge[0] == "basic":
            return self.auth._basic_header(self.registry)
        _, realm, service = challenge
        return "Bearer " + self._token(realm, service, scopes)

    def _token(self, realm: str, service: str, scopes: Tuple[str, ...], fresh: bool = False) -> str:
        key = (realm, service, _merge_scopes(scopes))
        cached = self.auth._tokens.get(key)
        if cached and not fresh and cached[1] > time.monotonic():
            return cached[0]
        _check_url_transport(realm, self.registry, "getting a token")
        query = ([("service", service)] if service else []) + [("scope", s) for s in key[2]]
        url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
        headers = {"User-Agent": USER_AGENT}
        basic = self.auth._basic_header(self.registry)
        if basic:
            headers["Authorization"] = basic
        self.auth.token_requests += 1
        what = f"getting a token for {self.where} from {_redact_url(realm)}"
        with self._send_following("GET", url, headers, None, what, redirects=True) as resp:
            body = resp.read(1 << 20)
            if resp.status in (401, 403):
                raise AuthenticationError(
                    f"{what}: HTTP {resp.status} {resp.reason}{_error_details(body)}; the token server "
                    f"refused {self.auth._who(self.registry)}", registry=self.registry,
                    repository=self.repository, status=resp.status)
            if resp.status != 200:
                raise RegistryError(f"{what}: HTTP {resp.status} {resp.reason}{_error_details(body)}",
                                    registry=self.registry, repository=self.repository, status=resp.status)
        try:
            data = json.loads(body)
            token = data.get("token") or data.get("access_token")
            expires_in = float(data.get("expires_in") or 60)
        except (ValueError, AttributeError, TypeError):
            token = None
        if not isinstance(token, str) or not token:
            raise AuthenticationError(f"{what}: the answer has no token", registry=self.registry,
                                      repository=self.repository)
        self.auth._tokens[key] = (token, time.monotonic() + max(expires_in * 0.9 - 5, 0))
        return token

    def _on_challenge(self, resp: _Response, sent: Optional[str], scopes: Tuple[str, ...], what: str) -> bool:
        """Learn from a 401; True if a retry with (new) credentials makes sense."""
        challenges = _parse_challenges(resp.headers.get_all("WWW-Authenticate") or [])
        by_scheme = {scheme: params for scheme, params in challenges}
        if "bearer" in by_scheme and by_scheme["bearer"].get("realm"):
            params = by_scheme["bearer"]
            realm, service = params["realm"], params.get("service", "")
            self.auth._challenges[self.registry] = ("bearer", realm, service)
            wanted = tuple(s for s in params.get("scope", "").split() if s)
            ours, everything = _merge_scopes(scopes), _merge_scopes(scopes + wanted)
            token = self._token(realm, service, everything, fresh=True)
            if everything != ours:  # a token for more also serves our requests
                self.auth._tokens[(realm, service, ours)] = self.auth._tokens[(realm, service, everything)]
            return sent != "Bearer " + token
        if "basic" in by_scheme:
            self.auth._challenges[self.registry] = ("basic",)
            basic = self.auth._basic_header(self.registry)
            if basic is None:
                raise AuthenticationError(
                    f"{what} at {self.where}: HTTP 401, the registry needs credentials; pass --username "
                    f"with --password-stdin, or set {USERNAME_ENV} and {PASSWORD_ENV}",
                    registry=self.registry, repository=self.repository, status=401)
            return sent != basic
        return False

    def _request(self, method: str, path_or_url: str, *, what: str, ok: Sequence[int] = (200,),
                 headers: Optional[Dict[str, str]] = None, body: Union[None, bytes, _FileBody] = None,
                 redirects: bool = False, extra_scopes: Tuple[str, ...] = ()) -> _Response:
        url = path_or_url if "://" in path_or_url else self.base + path_or_url
        parts = _check_url_transport(url, self.registry, what)
        ours = parts.netloc == urllib.parse.urlsplit(self.base).netloc
        scopes = self._scopes(extra_scopes)
        for attempt in (0, 1):
            sent = self._authorization(scopes) if ours else None
            request_headers = {"User-Agent": USER_AGENT, **(headers or {})}
            if sent:
                request_headers["Authorization"] = sent
            if isinstance(body, _FileBody):
                body.rewind()
            resp = self._send_following(method, url, request_headers, body, what, redirects)
            if resp.status == 401 and attempt == 0 and ours:
                early = self._read_error_body(resp)
                try:
                    retry = self._on_challenge(resp, sent, scopes, what)
                finally:
                    resp.close()
                if retry:
                    continue
                self._fail(resp, what, sent, early)
            break
        if resp.status in ok:
            return resp
        self._fail(resp, what, sent, self._read_error_body(resp))
        raise AssertionError("unreachable")

    @staticmethod
    def _read_error_body(resp: _Response) -> bytes:
        try:
            return resp.read(_MAX_ERROR_BODY)
        except (OSError, http.client.HTTPException):
            return b""
        finally:
            resp.close()

    def _fail(self, resp: _Response, what: str, sent: Optional[str], body: bytes) -> None:
        errors = _error_entries(body)
        message = f"{what} at {self.where} failed: HTTP {resp.status} {resp.reason}{_error_details(body)}"
        if resp.status in (401, 403):
            if self.auth.username is None and self.auth._provider is None:
                message += (f"; the registry needs credentials: pass --username with --password-stdin, "
                            f"or set {USERNAME_ENV} and {PASSWORD_ENV}")
            elif sent:
                message += f" (the registry refused {self.auth._who(self.registry)})"
            raise AuthenticationError(message, registry=self.registry, repository=self.repository,
                                      status=resp.status, errors=errors)
        raise RegistryError(message, registry=self.registry, repository=self.repository,
                            status=resp.status, errors=errors)

    def _send_following(self, method: str, url: str, headers: Dict[str, str],
                        body: Union[None, bytes, _FileBody], what: str, redirects: bool) -> _Response:
        origin = urllib.parse.urlsplit(url).netloc
        for _ in range(_MAX_REDIRECTS + 1):
            resp = self._send(method, url, headers, body, what)
            location = resp.headers.get("Location")
            if not (redirects and resp.status in (301, 302, 303, 307, 308) and location):
                return resp
            resp.close()
            url = urllib.parse.urljoin(url, location)
            parts = _check_url_transport(url, self.registry, what)
            if parts.netloc != origin:
                # Pre-signed storage URLs carry their own authorization; ours must not leak there.
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        raise RegistryError(f"{what} at {self.where}: more than {_MAX_REDIRECTS} redirects",
                            registry=self.registry, repository=self.repository)

    def _send(self, method: str, url: str, headers: Dict[str, str], body: Union[None, bytes, _FileBody],
              what: str) -> _Response:
        parts = urllib.parse.urlsplit(url)
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            context = self._ssl_context or ssl.create_default_context()
            conn = http.client.HTTPSConnection(parts.netloc, timeout=self.timeout, context=context,
                                               blocksize=_CHUNK)
        else:
            conn = http.client.HTTPConnection(parts.netloc, timeout=self.timeout, blocksize=_CHUNK)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            conn.request(method, target, body=body, headers=headers)  # type: ignore[arg-type]
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise RegistryError(f"{what} at {self.where}: cannot talk to {parts.netloc.rpartition('@')[2]} "
                                f"({type(e).__name__}: {e})", registry=self.registry,
                                repository=self.repository) from e
        return _Response(conn, resp, url)


def _merge_scopes(scopes: Iterable[str]) -> Tuple[str, ...]:
    """Sorted scopes, one per resource: repository:a:pull + repository:a:pull,push -> repository:a:pull,push."""
    actions: Dict[str, set] = {}
    for scope in scopes:
        resource, sep, acts = scope.rpartition(":")
        if not sep or ":" not in resource:
            actions.setdefault(scope, set())
            continue
        actions.setdefault(resource, set()).update(a for a in acts.split(",") if a)
    return tuple(sorted(f"{r}:{','.join(sorted(a))}" if a else r for r, a in actions.items()))


def _error_entries(body: bytes) -> List[Dict[str, Any]]:
    try:
        errors = json.loads(body).get("errors")
    except (ValueError, AttributeError, UnicodeDecodeError):
        return []
    return [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []


def _error_details(body: bytes) -> str:
    entries = _error_entries(body)
    if entries:
        return ": " + "; ".join(f"{e.get('code', '?')}: {e.get('message', '')}".rstrip(": ") for e in entries)
    text = body.decode("utf-8", "replace").strip()
    if text and len(text) <= 300 and "<" not in text:
        return f": {text}"
    return ""


# ---------------------------------------------------------------------------------------------
# Layouts


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int

    @classmethod
    def of(cls, data: Any, where: str) -> "Descriptor":
        try:
            digest, size = data["digest"], int(data["size"])
            media_type = data.get("mediaType", "")
        except (TypeError, KeyError, ValueError) as e:
            raise LayoutError(f"{where}: malformed descriptor {data!r}") from e
        if not isinstance(digest, str) or not _DIGEST_RE.match(digest):
            raise LayoutError(f"{where}: {digest!r} is not a sha256 digest")
        return cls(media_type, digest, size)


def blob_path(layout_dir: Union[str, Path], digest: str) -> Path:
    if not _DIGEST_RE.match(digest):
        raise LayoutError(f"{digest!r} is not a sha256 digest")
    return Path(layout_dir) / "blobs" / "sha256" / digest.split(":", 1)[1]


@dataclass(frozen=True)
class LocalImage:
    """One single-platform image of an OCI layout: its manifest bytes and the blobs it names."""

    layout_dir: Path
    manifest: bytes
    manifest_digest: str
    media_type: str
    config: Descriptor
    layers: Tuple[Descriptor, ...]

    @property
    def blobs(self) -> Tuple[Descriptor, ...]:
        return self.layers + (self.config,)


def _read_layout_blob(layout: Path, desc: Descriptor, limit: int) -> bytes:
    path = blob_path(layout, desc.digest)
    if not path.is_file():
        raise LayoutError(f"{layout}: blob {desc.digest} is missing ({path})")
    if desc.size > limit:
        raise LayoutError(f"{layout}: {desc.digest} is {desc.size} bytes, more than a manifest may be")
    data = path.read_bytes()
    if "sha256:" + hashlib.sha256(data).hexdigest() != desc.digest or len(data) != desc.size:
        raise LayoutError(f"{layout}: blob {desc.digest} does not match its digest or size")
    return data


def read_layout(layout_dir: Union[str, Path], tag: Optional[str] = None) -> LocalImage:
    """The image of an OCI layout: index.json must name one manifest (or, with several, exactly one
    annotated with ref.name `tag`); an image index holding a single manifest is followed."""
    layout = Path(layout_dir)
    if not (layout / "oci-layout").is_file():
        raise LayoutError(f"{layout} is not an OCI image layout (no oci-layout file)")
    try:
        index = json.loads((layout / "index.json").read_bytes())
        entries = index["manifests"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise LayoutError(f"{layout}/index.json is missing or malformed: {e}") from e
    if not isinstance(entries, list) or not entries:
        raise LayoutError(f"{layout}/index.json names no manifest")
    if len(entries) > 1:
        named = [e for e in entries if tag and (e.get("annotations") or {}).get(REF_NAME_ANNOTATION) == tag]
        if len(named) != 1:
            raise LayoutError(f"{layout}/index.json names {len(entries)} manifests; push needs one, or "
                              f"exactly one annotated {REF_NAME_ANNOTATION}={tag!r}")
        entries = named
    desc = Descriptor.of(entries[0], f"{layout}/index.json")
    for _ in range(2):
        data = _read_layout_blob(layout, desc, _MAX_MANIFEST_BYTES)
        try:
            manifest = json.loads(data)
        except ValueError as e:
            raise LayoutError(f"{layout}: manifest {desc.digest} is not JSON: {e}") from e
        media_type = manifest.get("mediaType") or desc.media_type or MEDIA_TYPE_OCI_MANIFEST
        if media_type in INDEX_MEDIA_TYPES or ("manifests" in manifest and "layers" not in manifest):
            inner = manifest.get("manifests") or []
            if len(inner) != 1:
                raise LayoutError(f"{layout}: image index {desc.digest} holds {len(inner)} manifests; "
                                  "only single-platform images (or an index of one) can be pushed")
            desc = Descriptor.of(inner[0], f"{layout}: index {desc.digest}")
            continue
        if media_type not in MANIFEST_MEDIA_TYPES:
            raise LayoutError(f"{layout}: manifest {desc.digest} has unsupported media type {media_type!r}")
        config = Descriptor.of(manifest.get("config"), f"{layout}: manifest {desc.digest} config")
        layers = tuple(Descriptor.of(l, f"{layout}: manifest {desc.digest} layer")
                       for l in manifest.get("layers") or [])
        for blob in layers + (config,):
            path = blob_path(layout, blob.digest)
            if not path.is_file():
                raise LayoutError(f"{layout}: blob {blob.digest} is missing ({path})")
            if path.stat().st_size != blob.size:
                raise LayoutError(f"{layout}: blob {blob.digest} is {path.stat().st_size} bytes, "
                                  f"its descriptor says {blob.size}")
        return LocalImage(layout, data, desc.digest, media_type, config, layers)
    raise LayoutError(f"{layout}: image indexes nested more than one level deep")


def _write_json_atomic(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(json.dumps(value, sort_keys=True, separators=(",", ":")).encode())
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# Push and pull


@dataclass(frozen=True)
class BlobTransfer:
    digest: str
    size: int
    media_type: str
    action: str  # push: "uploaded", "skipped", "mounted"; pull: "downloaded", "cached", "present"


@dataclass
class PushResult:
    reference: Reference  # with the manifest digest filled in
    manifest_digest: str
    manifest_media_type: str
    manifest_size: int
    blobs: List[BlobTransfer] = field(default_factory=list)

    def _count(self, action: str) -> Tuple[int, int]:
        chosen = [b for b in self.blobs if b.action == action]
        return len(chosen), sum(b.size for b in chosen)

    @property
    def uploaded_count(self) -> int:
        return self._count("uploaded")[0]

    @property
    def uploaded_bytes(self) -> int:
        """Blob bytes sent (the manifest, `manifest_size` bytes, always travels and is not counted)."""
        return self._count("uploaded")[1]

    @property
    def skipped_count(self) -> int:
        return self._count("skipped")[0]

    @property
    def skipped_bytes(self) -> int:
        return self._count("skipped")[1]

    @property
    def mounted_count(self) -> int:
        return self._count("mounted")[0]

    def summary(self) -> Dict[str, Any]:
        return {"reference": str(self.reference), "digest": self.manifest_digest,
                "uploaded": self.uploaded_count, "uploaded_bytes": self.uploaded_bytes,
                "skipped": self.skipped_count, "skipped_bytes": self.skipped_bytes,
                "mounted": self.mounted_count, "manifest_bytes": self.manifest_size}


@dataclass
class PullResult:
    reference: Reference
    manifest_digest: str  # of the single-platform manifest written to the layout
    manifest_media_type: str
    index_digest: Optional[str]  # of the index / manifest list the reference named, if it was one
    layout_dir: Path
    blobs: List[BlobTransfer] = field(default_factory=list)

    @property
    def downloaded_count(self) -> int:
        return sum(1 for b in self.blobs if b.action == "downloaded")

    @property
    def downloaded_bytes(self) -> int:
        return sum(b.size for b in self.blobs if b.action == "downloaded")

    def summary(self) -> Dict[str, Any]:
        return {"reference": str(self.reference), "digest": self.manifest_digest,
                "index_digest": self.index_digest, "layout": str(self.layout_dir),
                "downloaded": self.downloaded_count, "downloaded_bytes": self.downloaded_bytes,
                "reused": sum(1 for b in self.blobs if b.action != "downloaded")}


def push_layout(layout_dir: Union[str, Path], reference: Union[str, Reference], auth: Optional[Auth] = None, *,
                plain_http: Optional[bool] = None, mount_from: Sequence[str] = (), timeout: float = 60.0,
                quiet: bool = False, ssl_context: Optional[ssl.SSLContext] = None) -> PushResult:
    """Push the image of an OCI layout to `reference` (a tag, a digest or both), sending only the
    blobs the registry lacks. `mount_from`: repositories of the same registry to try to mount
    missing blobs from before uploading them."""
    ref = Reference.parse(reference)
    if not ref.tag and not ref.digest:
        raise InvalidReference(f"{ref}: name a tag (or a digest) to push to")
    client = RegistryClient(ref.registry, ref.repository, auth, plain_http=plain_http, push=True,
                            timeout=timeout, ssl_context=ssl_context)
    image = read_layout(layout_dir, ref.tag)
    if ref.digest and ref.digest != image.manifest_digest:
        raise DigestMismatchError(f"{layout_dir} holds manifest {image.manifest_digest}, not {ref.digest}",
                                  registry=ref.registry, repository=ref.repository)
    result = PushResult(ref.replace(digest=image.manifest_digest), image.manifest_digest, image.media_type,
                        len(image.manifest))
    sources = [s for s in dict.fromkeys(mount_from) if s != ref.repository]
    seen = set()
    for blob in image.blobs:
        if blob.digest in seen:
            continue
        seen.add(blob.digest)
        if client.blob_exists(blob.digest):
            result.blobs.append(BlobTransfer(blob.digest, blob.size, blob.media_type, "skipped"))
            continue
        location: Optional[str] = None
        for i, source in enumerate(sources):
            location = client.start_upload(mount=blob.digest, mount_from=source)
            if location is None:
                break
            if i < len(sources) - 1:  # not there: the registry opened an ordinary upload instead
                client.cancel_upload(location)
        if sources and location is None:
            result.blobs.append(BlobTransfer(blob.digest, blob.size, blob.media_type, "mounted"))
            continue
        client.upload_blob(blob.digest, blob_path(image.layout_dir, blob.digest), blob.size, location,
                           quiet=quiet)
        result.blobs.append(BlobTransfer(blob.digest, blob.size, blob.media_type, "uploaded"))
    returned = client.put_manifest(ref.tag or image.manifest_digest, image.manifest, image.media_type)
    if returned and returned != image.manifest_digest:
        raise DigestMismatchError(
            f"{client.where}: the registry stored manifest {ref.tag or ''} as {returned}, but its digest "
            f"is {image.manifest_digest}", registry=ref.registry, repository=ref.repository)
    return result


def _platform_matches(desc: Mapping[str, Any], wanted: str) -> bool:
    os_name, _, rest = wanted.partition("/")
    arch, _, variant = rest.partition("/")
    platform = desc.get("platform") or {}
    return (platform.get("os") == os_name and platform.get("architecture") == arch
            and (not variant or platform.get("variant") == variant))


def _verify_cached(path: Path, digest: str, size: int) -> bool:
    try:
        return path.stat().st_size == size and file_digest(path) == digest
    except OSError:
        return False


def _link_or_copy(source: Path, dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, dest)


def pull(reference: Union[str, Reference], dest_layout_dir: Union[str, Path], auth: Optional[Auth] = None, *,
         cache_dir: Union[None, str, Path] = None, platform: str = "linux/amd64",
         plain_http: Optional[bool] = None, timeout: float = 60.0, quiet: bool = False,
         ssl_context: Optional[ssl.SSLContext] = None) -> PullResult:
    """Pull `reference` into an OCI image layout at `dest_layout_dir` (its index.json is replaced
    and names the one pulled manifest). With a digest in the reference, the manifest is fetched by
    that digest and must match it. Blobs already in the layout or in `cache_dir`
    (<cache_dir>/blobs/sha256/<hex>) are verified and reused; downloaded ones are added to the cache."""
    ref = Reference.parse(reference)
    if not ref.tag and not ref.digest:
        raise InvalidReference(f"{ref}: name a tag or a digest to pull")
    client = RegistryClient(ref.registry, ref.repository, auth, plain_http=plain_http, push=False,
                            timeout=timeout, ssl_context=ssl_context)
    target = ref.digest or ref.tag
    assert target is not None
    data, content_type, announced = client.get_manifest(target)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    if ref.digest and digest != ref.digest:
        raise DigestMismatchError(f"{client.where}: manifest {target} has digest {digest}, expected "
                                  f"{ref.digest}", registry=ref.registry, repository=ref.repository)
    if announced and announced != digest:
        raise DigestMismatchError(f"{client.where}: manifest {target} has digest {digest}, but the registry "
                                  f"announced {announced}", registry=ref.registry, repository=ref.repository)
    try:
        manifest = json.loads(data)
    except ValueError as e:
        raise RegistryError(f"{client.where}: manifest {target} is not JSON: {e}", registry=ref.registry,
                            repository=ref.repository) from e
    media_type = manifest.get("mediaType") or content_type
    index_digest = None
    picked: Optional[Mapping[str, Any]] = None
    if media_type in INDEX_MEDIA_TYPES or ("manifests" in manifest and "layers" not in manifest):
        index_digest = digest
        choices = [m for m in manifest.get("manifests") or [] if _platform_matches(m, platform)]
        if not choices:
            available = sorted({"/".join(filter(None, (p.get("os"), p.get("architecture"), p.get("variant"))))
                                for p in (m.get("platform") or {} for m in manifest.get("manifests") or [])})
            raise RegistryError(f"{client.where}: {target} has no {platform} image (it has: "
                                f"{', '.join(available) or 'none'})", registry=ref.registry,
                                repository=ref.repository)
        picked = choices[0]
        desc = Descriptor.of(picked, f"{client.where}: index {digest}")
        data, content_type, _ = client.get_manifest(desc.digest)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if digest != desc.digest:
            raise DigestMismatchError(f"{client.where}: manifest {desc.digest} (for {platform}) has digest "
                                      f"{digest}", registry=ref.registry, repository=ref.repository)
        manifest = json.loads(data)
        media_type = manifest.get("mediaType") or desc.media_type or content_type
    if media_type not in MANIFEST_MEDIA_TYPES or "config" not in manifest:
        raise RegistryError(f"{client.where}: manifest {target} has unsupported media type {media_type!r} "
                            "(OCI or Docker v2 image manifests only)", registry=ref.registry,
                            repository=ref.repository)
    where = f"{client.where}: manifest {digest}"
    blobs = [Descriptor.of(manifest["config"], where)]
    blobs += [Descriptor.of(layer, where) for layer in manifest.get("layers") or []]

    dest = Path(dest_layout_dir)
    (dest / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir) if cache_dir is not None else None
    if cache is not None:
        (cache / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    result = PullResult(ref, digest, media_type, index_digest, dest)
    seen = set()
    for blob in blobs:
        if blob.digest in seen:
            continue
        seen.add(blob.digest)
        path = blob_path(dest, blob.digest)
        cached = blob_path(cache, blob.digest) if cache is not None else None
        if _verify_cached(path, blob.digest, blob.size):
            action = "present"
        elif cached is not None and _verify_cached(cached, blob.digest, blob.size):
            _link_or_copy(cached, path)
            action = "cached"
        else:
            client.download_blob(blob.digest, path, blob.size, quiet=quiet)
            action = "downloaded"
        if cached is not None and action != "cached" and not _verify_cached(cached, blob.digest, blob.size):
            _link_or_copy(path, cached)
        result.blobs.append(BlobTransfer(blob.digest, blob.size, blob.media_type, action))

    blob_path(dest, digest).write_bytes(data)
    entry: Dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": len(data)}
    if picked is not None and picked.get("platform"):
        entry["platform"] = picked["platform"]
    if ref.tag:
        entry["annotations"] = {REF_NAME_ANNOTATION: ref.tag}
    _write_json_atomic(dest / "oci-layout", {"imageLayoutVersion": "1.0.0"})
    _write_json_atomic(dest / "index.json", {"schemaVersion": 2, "mediaType": MEDIA_TYPE_OCI_INDEX,
                                             "manifests": [entry]})
    return result


# ---------------------------------------------------------------------------------------------
# Command line


def _cli_auth(args: argparse.Namespace, registry: str, parser: argparse.ArgumentParser) -> Auth:
    if args.password_stdin and not args.username:
        parser.error("--password-stdin needs --username")
    if args.username:
        if args.password_stdin:
            password = sys.stdin.readline().rstrip("\r\n")
        elif os.environ.get(PASSWORD_ENV) is not None:
            password = os.environ[PASSWORD_ENV]
        else:
            parser.error(f"--username needs --password-stdin (or {PASSWORD_ENV})")
        return Auth(args.username, password)
    return Auth.for_registry(registry, "ecr" if args.ecr else "auto")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ml_image.registry", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    push_p = sub.add_parser("push", help="push an OCI image layout to registry/repository:tag")
    push_p.add_argument("layout", type=Path)
    push_p.add_argument("reference")
    push_p.add_argument("--mount-from", action="append", default=[], metavar="REPOSITORY",
                        help="a repository of the same registry to mount missing blobs from")
    push_p.add_argument("--create-ecr-repository", action="store_true",
                        help="create the ECR repository first if it does not exist (boto3); always done "
                             "for ECR hosts, this is for registries fronted by ECR")
    pull_p = sub.add_parser("pull", help="pull registry/repository:tag[@digest] into an OCI image layout")
    pull_p.add_argument("reference")
    pull_p.add_argument("dest", type=Path)
    pull_p.add_argument("--cache-dir", type=Path, help="content-addressed blob cache (blobs/sha256/<hex>)")
    pull_p.add_argument("--platform", default="linux/amd64", help="os/arch[/variant] to pick from an index")
    for p in (push_p, pull_p):
        p.add_argument("--username", help=f"with --password-stdin (or {PASSWORD_ENV}); default: "
                                          f"{USERNAME_ENV}/{PASSWORD_ENV}, ECR for ECR hosts, anonymous")
        p.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
        p.add_argument("--ecr", action="store_true", help="get credentials from Amazon ECR through boto3")
        transport = p.add_mutually_exclusive_group()
        transport.add_argument("--plain-http", dest="plain_http", action="store_const", const=True,
                               help="plain HTTP (loopback registries only; the default for them)")
        transport.add_argument("--https", dest="plain_http", action="store_const", const=False,
                               help="HTTPS even for a loopback registry")
        p.add_argument("--timeout", type=float, default=60.0, help="seconds per network operation")
        p.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    try:
        ref = Reference.parse(args.reference)
        auth = _cli_auth(args, ref.registry, parser)
        if args.command == "push":
            if args.create_ecr_repository or is_ecr_host(ref.registry):
                ensure_ecr_repository(ref.repository, ref.registry if is_ecr_host(ref.registry) else None)
            result: Union[PushResult, PullResult] = push_layout(
                args.layout, ref, auth, plain_http=args.plain_http, mount_from=args.mount_from,
                timeout=args.timeout, quiet=args.quiet)
        else:
            result = pull(ref, args.dest, auth, cache_dir=args.cache_dir, platform=args.platform,
                          plain_http=args.plain_http, timeout=args.timeout, quiet=args.quiet)
    except RegistryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result.summary(), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
