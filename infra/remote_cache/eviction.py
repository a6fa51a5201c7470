"""Keeps BuildGrid's disk CAS under a size bound by evicting the least recently used blobs.

BuildGrid 0.4.4 bounds a disk CAS only through an SQL index on PostgreSQL (`bgd cleanup`); a
cache for a team of this size should not need a database. A blob is a file named by its digest,
so recency is the file's own: written (mtime) or read (atime; under `relatime` the first read after
a write and then at most daily, which is fine for a cache measured in gigabytes). Deleting a blob
is always safe: BuildGrid checks that every blob an action result names is still present before
it answers a lookup, so eviction turns hits into misses, never into wrong or broken builds.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from remote_cache.cas_layout import blob_files

LOG = logging.getLogger(__name__)

# Evicting down to this fraction of the bound, not just under it, so that a busy cache sweeps
# once in a while instead of on every new blob.
LOW_WATERMARK = 0.9


@dataclass(frozen=True)
class Blob:
    path: Path
    size: int
    last_used: float


@dataclass(frozen=True)
class Sweep:
    total_bytes: int
    evicted_blobs: int
    evicted_bytes: int


def blobs(data: Path) -> list[Blob]:
    found = []
    for entry in blob_files(data):
        try:
            st = entry.stat()
        except FileNotFoundError:  # evicted or replaced meanwhile
            continue
        found.append(Blob(entry, st.st_size, max(st.st_atime, st.st_mtime)))
    return found


def sweep(data: Path, max_bytes: int) -> Sweep:
    """Deletes the least recently used blobs of the CAS under `data` once their total passes
    `max_bytes`."""
    found = blobs(data)
    total = sum(b.size for b in found)
    if total <= max_bytes:
        return Sweep(total, 0, 0)
    target = int(max_bytes * LOW_WATERMARK)
    evicted = evicted_bytes = 0
    for blob in sorted(found, key=lambda b: b.last_used):
        if total - evicted_bytes <= target:
            break
        try:
            blob.path.unlink()
        except FileNotFoundError:
            continue
        evicted += 1
        evicted_bytes += blob.size
    LOG.info(
        "remote cache: %d bytes over the %d-byte bound; evicted %d least recently used blobs (%d bytes)",
        total - max_bytes, max_bytes, evicted, evicted_bytes,
    )
    return Sweep(total - evicted_bytes, evicted, evicted_bytes)


def keep_bounded(data: Path, max_bytes: int, every_seconds: float, stop: threading.Event) -> None:
    """Sweeps every `every_seconds` until `stop` is set (the server's lifetime)."""
    while not stop.wait(every_seconds):
        try:
            sweep(data, max_bytes)
        except OSError as e:  # a full disk or a vanished folder must not take the server down
            LOG.warning("remote cache: eviction sweep failed: %s", e)
