from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import pytest

from ml_runtime.shared_cache import SharedCache, content_key


def test_get_put_and_lru_eviction_by_bytes(tmp_path: Path) -> None:
    cache = SharedCache(tmp_path, max_bytes=300)
    for key in ("a", "b", "c"):
        cache.put(key, key.encode() * 100)
        time.sleep(0.01)  # distinct last-use times
    assert cache.get("a") == b"a" * 100  # a is now the most recently used
    time.sleep(0.01)
    cache.put("d", b"d" * 100)  # 400 bytes: the least recently used (b) goes
    assert cache.get("b") is None
    assert cache.get("a") and cache.get("c") and cache.get("d")
    stats = cache.stats()
    assert (stats.entries, stats.bytes, stats.evictions) == (3, 300, 1)
    assert (stats.hits, stats.misses) == (4, 1)


def test_an_entry_bigger_than_the_bound_is_not_kept(tmp_path: Path) -> None:
    cache = SharedCache(tmp_path, max_bytes=10)
    cache.put("big", b"x" * 11)
    assert cache.get("big") is None and cache.stats().bytes == 0


def test_bad_keys_are_refused(tmp_path: Path) -> None:
    cache = SharedCache(tmp_path, max_bytes=10)
    for key in ("", "../x", "a/b", "x" * 129):
        with pytest.raises(ValueError, match="not a cache key"):
            cache.get(key)
    assert len(content_key(b"image")) == 64


def _create_slowly(directory: str, key: str, marker: str) -> bytes:
    def create() -> bytes:
        with open(marker, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.3)
        return b"embedding"
    data, _ = SharedCache(Path(directory), 1000).get_or_create(key, create)
    return data


def test_concurrent_requests_for_a_new_key_create_it_once(tmp_path: Path) -> None:
    marker = tmp_path / "created"
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        results = pool.starmap(_create_slowly, [(str(tmp_path / "c"), "k", str(marker))] * 4)
    assert results == [b"embedding"] * 4
    assert len(marker.read_text().splitlines()) == 1
    stats = SharedCache(tmp_path / "c", 1000).stats()
    assert (stats.misses, stats.hits) == (1, 3)
