"""A byte-bounded, least-recently-used store that every worker of one model server shares.

Why: a model that splits an expensive step from cheap follow-ups (Segment-Anything embeds an
image once, then answers many clicks) must find the expensive result whichever worker made it;
a per-process cache misses as soon as there are two workers. The server makes one directory per
run (on tmpfs, /dev/shm, where there is one: memory, not disk) and hands it to its workers in
ML_SHARED_CACHE_DIR, with the bound in ML_SHARED_CACHE_BYTES; the store is plain files there:

    <key>.bin     one entry's bytes; its mtime is its last use (LRU order)
    <key>.lock    held while a worker creates that entry: concurrent requests for the same new
                  key wait for the first and then read its result (it is created once)
    .lock         held for the short bookkeeping steps (insert, evict, counters)
    .stats        the counters, JSON: hits, misses, evictions (entries and bytes are read off
                  the directory when asked for)

Standard library only: it runs inside model environments.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

CACHE_DIR_ENV = "ML_SHARED_CACHE_DIR"
CACHE_BYTES_ENV = "ML_SHARED_CACHE_BYTES"  # a model sets it in its `env` (the ml_model field)
DEFAULT_BYTES = 256 * 2**20
# Memory, not disk, where the host has it (Linux); else the temporary directory.
_TMPFS = "/dev/shm"
_KEY = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


_COUNTERS = ("hits", "misses", "evictions")


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    entries: int = 0
    bytes: int = 0


def bound_from_env() -> int:
    """The bound in bytes: ML_SHARED_CACHE_BYTES, else DEFAULT_BYTES."""
    raw = os.environ.get(CACHE_BYTES_ENV, "")
    try:
        return int(raw) if raw else DEFAULT_BYTES
    except ValueError:
        raise ValueError(f"{CACHE_BYTES_ENV} is {raw!r}: give a number of bytes") from None


def new_directory(owner: str) -> str:
    """A new, private directory for one server's store (the server removes it when it stops)."""
    base = _TMPFS if os.access(_TMPFS, os.W_OK) else None
    return tempfile.mkdtemp(prefix=f"ml-cache-{owner}-", dir=base)


def content_key(data: bytes) -> str:
    """A key for `data` by its content (sha256, hex): the same bytes always give the same key."""
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class SharedCache:
    """The store in `directory`, holding at most `max_bytes` of entries."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"the cache bound must be positive, not {max_bytes}")
        self.directory, self.max_bytes = Path(directory), max_bytes
        self.directory.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_env(cls) -> "SharedCache":
        """The server's store when a server started this worker; else one of this process's own
        (`once`, tests), in a new directory."""
        directory = os.environ.get(CACHE_DIR_ENV)
        if not directory:
            directory = new_directory("worker")
            atexit.register(shutil.rmtree, directory, ignore_errors=True)
        return cls(Path(directory), bound_from_env())

    def _entry(self, key: str) -> Path:
        if not _KEY.match(key):
            raise ValueError(f"not a cache key: {key!r} (letters, digits, - and _, at most 128)")
        return self.directory / f"{key}.bin"

    def get(self, key: str) -> Optional[bytes]:
        """The entry's bytes (and it becomes the most recently used), or None; counted."""
        path = self._entry(key)
        data = self._read(path)
        self._count("hits" if data is not None else "misses")
        return data

    def get_or_create(self, key: str, create: Callable[[], bytes]) -> tuple[bytes, bool]:
        """The entry's bytes, created with `create()` when missing (by one worker only: the
        others wait for it); and whether it was there already."""
        path = self._entry(key)
        data = self._read(path)
        if data is not None:
            self._count("hits")
            return data, True
        with _locked(self.directory / f"{key}.lock"):
            data = self._read(path)  # made while this worker waited
            if data is not None:
                self._count("hits")
                return data, True
            self._count("misses")
            data = create()
            self.put(key, data)
            return data, False

    def put(self, key: str, data: bytes) -> None:
        """Store an entry, then evict the least recently used ones beyond the bound. An entry
        larger than the whole bound is not stored."""
        path = self._entry(key)
        if len(data) > self.max_bytes:
            return
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)  # readers see the old entry or the whole new one
        with _locked(self.directory / ".lock"):
            self._evict()

    def _read(self, path: Path) -> Optional[bytes]:
        try:
            data = path.read_bytes()
            os.utime(path)  # last use
            return data
        except FileNotFoundError:
            return None

    def _entries(self) -> list[tuple[float, int, Path]]:
        found = []
        for path in self.directory.glob("*.bin"):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            found.append((stat.st_mtime_ns, stat.st_size, path))
        return sorted(found)

    def _evict(self) -> None:
        entries = self._entries()
        total = sum(size for _, size, _ in entries)
        evicted = 0
        for _, size, path in entries:
            if total <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            (path.with_suffix(".lock")).unlink(missing_ok=True)
            total -= size
            evicted += 1
        if evicted:
            self._add("evictions", evicted)

    def _count(self, counter: str) -> None:
        with _locked(self.directory / ".lock"):
            self._add(counter, 1)

    def _add(self, counter: str, n: int) -> None:
        """Add to one counter; the caller holds .lock."""
        counters = self._counters()
        counters[counter] += n
        tmp = self.directory / f".stats.tmp{os.getpid()}"
        tmp.write_text(json.dumps(counters))
        os.replace(tmp, self.directory / ".stats")

    def _counters(self) -> dict[str, int]:
        try:
            raw = json.loads((self.directory / ".stats").read_text())
        except (FileNotFoundError, ValueError):
            raw = {}
        return {k: int(raw.get(k, 0)) for k in _COUNTERS}

    def stats(self) -> CacheStats:
        """The counters and the current size (what /metrics shows)."""
        with _locked(self.directory / ".lock"):
            counters = self._counters()
            entries = self._entries()
        return CacheStats(**counters, entries=len(entries), bytes=sum(size for _, size, _ in entries))
