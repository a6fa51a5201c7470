"""The ready file: how a server started on port 0 tells who started it where it listens."""

from __future__ import annotations

import os


def write_ready_file(path: str, url: str) -> None:
    """Announce that a server listens at `url`: whoever waits for `path` (the deploy tools, the
    tests) sees no file or the whole URL, never a partial one."""
    with open(path + ".tmp", "w") as f:
        f.write(url)
    os.replace(path + ".tmp", path)
