"""Deterministic image layers: the same files always give the same tar and the same digests.

Entries are sorted, owners are root (or the image's non-root user where asked), mtimes are
zero and gzip carries no name or timestamp, so rebuilding an unchanged layer gives identical
bytes and a registry or host that has it never receives it again.

`write_tar` is the one tar writer of the image builder: `write_layer` (sorted, with parent
directories, gzipped) and the Debian base layer (`ml_image.debian_base`, which orders its own
entries) both go through it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterable, Iterator, Optional

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Entry:
    """One file system entry of a layer, at `path` (absolute inside the image)."""

    path: str
    kind: str  # "file", "dir", "symlink" or "hardlink"
    mode: int = 0o644
    source: Optional[Path] = None  # file contents from disk...
    data: Optional[bytes] = None  # ...or from memory
    # A symlink's target, as written; or the path (absolute inside the image) a hard link
    # points to, which must be written to the tar before the link.
    target: str = ""
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class LayerInfo:
    """What an image config and manifest need to know about a compressed layer."""

    digest: str  # sha256 of the gzip blob
    size: int  # bytes of the gzip blob
    diff_id: str  # sha256 of the uncompressed tar

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")

    @classmethod
    def read(cls, path: Path) -> "LayerInfo":
        return cls(**json.loads(path.read_text()))


class _HashingWriter(io.RawIOBase):
    """Counts and hashes what passes through on its way to `sink`."""

    def __init__(self, sink: BinaryIO) -> None:
        self.sink = sink
        self.sha256 = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.sha256.update(data)
        self.size += len(data)
        self.sink.write(data)
        return len(data)


def _parents(path: str) -> Iterator[str]:
    parts = PurePosixPath(path).parts[1:-1]
    for i in range(1, len(parts) + 1):
        yield "/" + "/".join(parts[:i])


def write_layer(entries: Iterable[Entry], output: Path, compresslevel: int = 6) -> LayerInfo:
    """Write `entries` as a gzip-compressed tar layer at `output`."""
    by_path: dict[str, Entry] = {}
    for entry in entries:
        by_path[entry.path] = entry  # a later entry for the same path wins, as in overlayfs
    for path in list(by_path):
        for parent in _parents(path):
            by_path.setdefault(parent, Entry(parent, "dir", 0o755))
    with output.open("wb") as raw:
        compressed = _HashingWriter(raw)
        with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, mtime=0,
                           compresslevel=compresslevel) as gz:
            uncompressed = _HashingWriter(gz)
            write_tar((by_path[path] for path in sorted(by_path)), uncompressed)
    return LayerInfo(
        digest="sha256:" + compressed.sha256.hexdigest(),
        size=compressed.size,
        diff_id="sha256:" + uncompressed.sha256.hexdigest(),
    )


def write_tar(entries: Iterable[Entry], fileobj: BinaryIO) -> None:
    """Write `entries` as an uncompressed, reproducible tar to `fileobj`, exactly in the order
    given: nothing is sorted, deduplicated or added (no parent directories), so the caller owns
    the layout, and a hard link must come after its target. `fileobj` need not be seekable."""
    with tarfile.open(fileobj=fileobj, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            _add(tar, entry)


def compress_layer(tar_path: Path, output: Path, compresslevel: int = 6) -> LayerInfo:
    """gzip an existing (deterministic) layer tar the same deterministic way."""
    diff_id = hashlib.sha256()
    with output.open("wb") as raw:
        compressed = _HashingWriter(raw)
        with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, mtime=0,
                           compresslevel=compresslevel) as gz, tar_path.open("rb") as src:
            for chunk in iter(lambda: src.read(_CHUNK), b""):
                diff_id.update(chunk)
                gz.write(chunk)
    return LayerInfo(
        digest="sha256:" + compressed.sha256.hexdigest(),
        size=compressed.size,
        diff_id="sha256:" + diff_id.hexdigest(),
    )


def _add(tar: tarfile.TarFile, entry: Entry) -> None:
    info = tarfile.TarInfo(entry.path.lstrip("/"))
    info.mtime = 0
    info.uid, info.gid = entry.uid, entry.gid
    info.uname = info.gname = ""
    info.mode = entry.mode
    if entry.kind == "dir":
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    elif entry.kind == "symlink":
        info.type = tarfile.SYMTYPE
        info.linkname = entry.target
        tar.addfile(info)
    elif entry.kind == "hardlink":
        # A tar names a link's target by its member name: relative to the root, like the path.
        info.type = tarfile.LNKTYPE
        info.linkname = entry.target.lstrip("/")
        tar.addfile(info)
    elif entry.kind != "file":
        raise ValueError(f"{entry.path}: unknown entry kind {entry.kind!r}")
    elif entry.data is not None:
        info.size = len(entry.data)
        tar.addfile(info, io.BytesIO(entry.data))
    else:
        assert entry.source is not None, entry.path
        info.size = entry.source.stat().st_size
        with entry.source.open("rb") as f:
            tar.addfile(info, f)


def tree_entries(root: Path, prefix: str, *, uid: int = 0, gid: int = 0) -> Iterator[Entry]:
    """Entries for everything under `root`, placed under `prefix` in the image."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = Path(dirpath).relative_to(root)
        base = PurePosixPath(prefix) / rel.as_posix() if str(rel) != "." else PurePosixPath(prefix)
        yield Entry(str(base), "dir", 0o755, uid=uid, gid=gid)
        for name in sorted(filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]):
            full = Path(dirpath) / name
            if full.is_symlink():
                yield Entry(str(base / name), "symlink", 0o777, target=os.readlink(full), uid=uid, gid=gid)
            else:
                mode = 0o755 if os.access(full, os.X_OK) else 0o644
                yield Entry(str(base / name), "file", mode, source=full, uid=uid, gid=gid)


def copy_blob(source: Path, blobs_dir: Path, digest: str) -> Path:
    """Place a blob in an OCI layout's blobs/sha256/ (hard link when possible: layers are big)."""
    algorithm, hex_digest = digest.split(":", 1)
    target = blobs_dir / algorithm / hex_digest
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
    return target


def file_digest(path: Path) -> str:
    """`sha256:<hex>` of a file, read in chunks: blobs can be hundreds of megabytes."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()
