"""Image references (`registry/repository[:tag][@digest]`) and the transport rules: plain HTTP
only for loopback registries, never a secret in a URL shown to anyone."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import urllib.parse
from dataclasses import dataclass
from typing import Any, Optional, Tuple, Union

from ml_image.registry.errors import InsecureTransportError, InvalidReference, RegistryError


DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}\Z")
_ANY_DIGEST_RE = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+\Z")
_REPO_COMPONENT_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*\Z")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")
_REGISTRY_RE = re.compile(
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)(?::(?P<port>[0-9]{1,5}))?\Z"
)


def is_loopback_host(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1 (names other than `localhost` are not resolved)."""
    name = host.strip().strip("[]").rstrip(".").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def split_hostport(registry: str) -> Tuple[str, Optional[int]]:
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
            if not DIGEST_RE.match(digest):
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
        _, port = split_hostport(registry)
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
        return split_hostport(self.registry)[0]

    @property
    def port(self) -> Optional[int]:
        return split_hostport(self.registry)[1]

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


def scheme_for(registry: str, plain_http: Optional[bool]) -> str:
    """None: plain HTTP for loopback registries, HTTPS otherwise. True: plain HTTP, loopback only."""
    loopback = is_loopback_host(split_hostport(registry)[0])
    if plain_http is None:
        return "http" if loopback else "https"
    if plain_http and not loopback:
        raise InsecureTransportError(
            f"refusing plain HTTP to {registry}: plain HTTP is only allowed for loopback registries "
            "(127.0.0.0/8, ::1, localhost); use HTTPS", registry=registry)
    return "http" if plain_http else "https"


def check_url_transport(url: str, registry: str, what: str) -> urllib.parse.SplitResult:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RegistryError(f"{what}: {registry} pointed at {redact_url(url)!r}, which is not an "
                            "http(s) URL", registry=registry)
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise InsecureTransportError(
            f"{what}: refusing plain HTTP to {parts.netloc} (sent there by {registry}); plain HTTP "
            "is only allowed for loopback hosts", registry=registry)
    return parts


def redact_url(url: str) -> str:
    """A URL for messages: no query (pre-signed URLs carry credentials there) and no userinfo."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))
