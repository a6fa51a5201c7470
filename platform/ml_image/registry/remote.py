"""Pushing a layout to a registry and pulling an image from one into a layout."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ml_image.layers import file_digest
from ml_image.registry.auth import Auth
from ml_image.registry.errors import DigestMismatchError, InvalidReference, RegistryError
from ml_image.registry.layout import write_json_atomic, blob_path, Descriptor, read_layout
from ml_image.media_types import (
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    MEDIA_TYPE_OCI_INDEX,
    REF_NAME_ANNOTATION,
)
from ml_image.registry.reference import Reference
from ml_image.registry.transport import RegistryClient


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
                plain_http: Optional[bool] = None, mount_from: Optional[Sequence[str]] = None,
                timeout: float = 60.0, quiet: bool = False,
                ssl_context: Optional[ssl.SSLContext] = None) -> PushResult:
    """Push the image of an OCI layout to `reference` (a tag, a digest or both), sending only the
    blobs the registry lacks. `mount_from`: repositories of the same registry to try to mount
    missing blobs from before uploading them; by default the registry's other repositories of
    the same namespace (a registry answers "have it?" per repository, so without a mount a
    second model re-uploads every layer it shares with the first: torch, CUDA, ...)."""
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
    if mount_from is None:
        mount_from = client.sibling_repositories()
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
    write_json_atomic(dest / "oci-layout", {"imageLayoutVersion": "1.0.0"})
    write_json_atomic(dest / "index.json", {"schemaVersion": 2, "mediaType": MEDIA_TYPE_OCI_INDEX,
                                             "manifests": [entry]})
    return result
