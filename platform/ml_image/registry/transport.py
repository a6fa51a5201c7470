"""HTTP to one repository of a registry: requests with authentication, redirects, progress
and the error bodies of the distribution API (`RegistryClient`)."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import ssl
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any, BinaryIO, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from ml_image.registry.auth import parse_challenges, Auth, PASSWORD_ENV, USERNAME_ENV
from ml_image.registry.errors import AuthenticationError, DigestMismatchError, RegistryError
from ml_image.media_types import (
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    MAX_MANIFEST_BYTES,
)
from ml_image.registry.reference import check_url_transport, redact_url, scheme_for


USER_AGENT = "ml-platform-registry/1"
_CHUNK = 1 << 20
_PROGRESS_MIN_BYTES = 1 << 20  # progress lines only for blobs larger than this
_MAX_ERROR_BODY = 64 << 10
_MAX_REDIRECTS = 5


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
        self.scheme = scheme_for(registry, plain_http)
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

    def sibling_repositories(self, limit: int = 1000) -> list[str]:
        """The registry's other repositories in this one's namespace (`ml/iris` for `ml/digits`),
        from its catalog: where a blob this image shares with them can be mounted from. Best
        effort: a registry without a readable catalog (ECR has none) gives none."""
        namespace = self.repository.rpartition("/")[0]
        try:
            with self._request("GET", f"/v2/_catalog?n={limit}", what="listing repositories",
                               extra_scopes=("registry:catalog:*",)) as resp:
                names = json.loads(resp.read(1 << 20)).get("repositories") or []
        except (RegistryError, ValueError, OSError):
            return []
        return [n for n in names if isinstance(n, str) and n != self.repository
                and n.rpartition("/")[0] == namespace]

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
            data = resp.read(MAX_MANIFEST_BYTES + 1)
            if len(data) > MAX_MANIFEST_BYTES:
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
        challenge = self.auth.challenge(self.registry)
        if challenge is None:
            return None  # the first request goes anonymous, and the registry says what it wants
        if challenge[0] == "basic":
            return self.auth.basic_header(self.registry)
        _, realm, service = challenge
        return "Bearer " + self._token(realm, service, scopes)

    def _token(self, realm: str, service: str, scopes: Tuple[str, ...], fresh: bool = False) -> str:
        key = (realm, service, _merge_scopes(scopes))
        cached = self.auth.cached_token(key)
        if cached and not fresh and cached[1] > time.monotonic():
            return cached[0]
        check_url_transport(realm, self.registry, "getting a token")
        query = ([("service", service)] if service else []) + [("scope", s) for s in key[2]]
        url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
        headers = {"User-Agent": USER_AGENT}
        basic = self.auth.basic_header(self.registry)
        if basic:
            headers["Authorization"] = basic
        self.auth.token_requests += 1
        what = f"getting a token for {self.where} from {redact_url(realm)}"
        with self._send_following("GET", url, headers, None, what, redirects=True) as resp:
            body = resp.read(1 << 20)
            if resp.status in (401, 403):
                raise AuthenticationError(
                    f"{what}: HTTP {resp.status} {resp.reason}{_error_details(body)}; the token server "
                    f"refused {self.auth.describe(self.registry)}", registry=self.registry,
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
        self.auth.remember_token(key, token, time.monotonic() + max(expires_in * 0.9 - 5, 0))
        return token

    def _on_challenge(self, resp: _Response, sent: Optional[str], scopes: Tuple[str, ...], what: str) -> bool:
        """Learn from a 401; True if a retry with (new) credentials makes sense."""
        challenges = parse_challenges(resp.headers.get_all("WWW-Authenticate") or [])
        by_scheme = {scheme: params for scheme, params in challenges}
        if "bearer" in by_scheme and by_scheme["bearer"].get("realm"):
            params = by_scheme["bearer"]
            realm, service = params["realm"], params.get("service", "")
            self.auth.remember_challenge(self.registry, ("bearer", realm, service))
            wanted = tuple(s for s in params.get("scope", "").split() if s)
            ours, everything = _merge_scopes(scopes), _merge_scopes(scopes + wanted)
            token = self._token(realm, service, everything, fresh=True)
            if everything != ours:  # a token for more also serves our requests
                self.auth.remember_token((realm, service, ours), *self.auth.cached_token((realm, service, everything)))
            return sent != "Bearer " + token
        if "basic" in by_scheme:
            self.auth.remember_challenge(self.registry, ("basic",))
            basic = self.auth.basic_header(self.registry)
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
        parts = check_url_transport(url, self.registry, what)
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
            if not self.auth.has_credentials:
                message += (f"; the registry needs credentials: pass --username with --password-stdin, "
                            f"or set {USERNAME_ENV} and {PASSWORD_ENV}")
            elif sent:
                message += f" (the registry refused {self.auth.describe(self.registry)})"
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
            parts = check_url_transport(url, self.registry, what)
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
