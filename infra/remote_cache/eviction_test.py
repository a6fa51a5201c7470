import os
import threading
from pathlib import Path

from remote_cache.cas_layout import OBJECTS_SUBDIR
from remote_cache.eviction import LOW_WATERMARK, keep_bounded, sweep


def _blob(data: Path, name: str, size: int, last_used: float) -> Path:
    path = data / OBJECTS_SUBDIR / name[:2] / name[2:]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    os.utime(path, (last_used, last_used))
    return path


def test_under_the_bound_nothing_is_evicted(tmp_path: Path) -> None:
    a = _blob(tmp_path, "aa01", 400, 100)
    b = _blob(tmp_path, "bb02", 500, 200)
    result = sweep(tmp_path, max_bytes=900)
    assert (result.total_bytes, result.evicted_blobs) == (900, 0)
    assert a.exists() and b.exists()


def test_over_the_bound_the_least_recently_used_go_first_down_to_the_low_watermark(tmp_path: Path) -> None:
    blobs = [_blob(tmp_path, f"{i:02x}00", 100, 100 + i) for i in range(12)]  # 1200 bytes
    result = sweep(tmp_path, max_bytes=1100)
    # Down to 90% of the bound (990), not just under it (one blob would do): three blobs, the
    # three least recently used.
    assert result.total_bytes <= 1100 * LOW_WATERMARK
    assert (result.evicted_blobs, result.evicted_bytes, result.total_bytes) == (3, 300, 900)
    assert [b.exists() for b in blobs] == [False] * 3 + [True] * 9


def test_a_read_counts_as_a_use(tmp_path: Path) -> None:
    written_first_read_last = _blob(tmp_path, "aa01", 600, 100)
    os.utime(written_first_read_last, (500, 100))  # atime: read after the other was written
    written_last = _blob(tmp_path, "bb02", 600, 300)
    sweep(tmp_path, max_bytes=1000)
    assert written_first_read_last.exists() and not written_last.exists()


def test_the_sweeper_runs_until_stopped(tmp_path: Path) -> None:
    stop = threading.Event()
    sweeper = threading.Thread(target=keep_bounded, args=(tmp_path, 100, 0.01, stop))
    sweeper.start()
    blob = _blob(tmp_path, "aa01", 500, 100)
    for _ in range(500):
        if not blob.exists():
            break
        stop.wait(0.01)
    stop.set()
    sweeper.join(timeout=5)
    assert not blob.exists() and not sweeper.is_alive()
