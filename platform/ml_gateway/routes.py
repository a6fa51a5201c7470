"""Which backend a request goes to: by host name (`<model>.ml.<domain>`) and by the version its
path names."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Union

from ml_contract.route_table import RouteBackend, RouteTable


@dataclass(frozen=True)
class Route:
    model: str  # the host label: <model>.ml.<domain>
    version: int
    backend: RouteBackend


@dataclass(frozen=True)
class NotRouted:
    reason: str


_OIP_VERSION = re.compile(r"^/v2/models/[^/]+/versions/(\d+)(?:/|$)")
_PATH_VERSION = re.compile(r"^/v(\d+)(?:/|$)")


def requested_version(path: str) -> Optional[int]:
    """The model version a path names, or None for "the highest live one". OIP paths start with
    /v2 whatever the model's version, so they are recognised before /v<N>/."""
    match = _OIP_VERSION.match(path)
    if match:
        return int(match.group(1))
    if path == "/v2" or path.startswith(("/v2/health/", "/v2/models/")) or path == "/v2/models":
        return None
    match = _PATH_VERSION.match(path)
    return int(match.group(1)) if match else None


def hostname(host_header: str) -> str:
    """`Iris.ML.localhost.:8480` -> `iris.ml.localhost`."""
    host = host_header.strip().lower()
    if host.startswith("["):  # an IPv6 literal is never a model's name
        return host
    return host.partition(":")[0].rstrip(".")


def resolve(table: RouteTable, host_header: str, path: str) -> Union[Route, NotRouted]:
    host = hostname(host_header)
    model = host[: -len(table.suffix)] if host.endswith(table.suffix) else ""
    if not model or "." in model:
        return NotRouted(f"host {host_header!r} names no model: use <model>{table.suffix}")
    versions = table.models.get(model)
    if not versions:
        return NotRouted(f"no model {model!r} is deployed behind this gateway")
    version = requested_version(path)
    if version is None:
        version = max(versions)
    backend = versions.get(version)
    if backend is None:
        live = ", ".join(f"v{v}" for v in sorted(versions))
        return NotRouted(f"{model} has no version {version} deployed (live: {live})")
    return Route(model, version, backend)
