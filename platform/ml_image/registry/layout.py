"""OCI image layouts on disk: reading one (index, manifest, blobs) and writing files atomically."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Tuple, Union

from ml_image.registry.errors import LayoutError
from ml_image.media_types import (
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    MAX_MANIFEST_BYTES,
    MEDIA_TYPE_OCI_MANIFEST,
    REF_NAME_ANNOTATION,
)
from ml_image.registry.reference import DIGEST_RE


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
        if not isinstance(digest, str) or not DIGEST_RE.match(digest):
            raise LayoutError(f"{where}: {digest!r} is not a sha256 digest")
        return cls(media_type, digest, size)


def blob_path(layout_dir: Union[str, Path], digest: str) -> Path:
    if not DIGEST_RE.match(digest):
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
        data = _read_layout_blob(layout, desc, MAX_MANIFEST_BYTES)
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


def write_json_atomic(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(json.dumps(value, sort_keys=True, separators=(",", ":")).encode())
    os.replace(tmp, path)
