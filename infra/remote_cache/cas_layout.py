"""Where BuildGrid's disk storage keeps the CAS under serve.py's --data: one file per blob, named
by its sha256, at cas/objects/<first 2 hex>/<other 62 hex>. Standard library only: the tests and
benches that look into a running cache (another resolve) read the layout here too."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

OBJECTS_SUBDIR = Path("cas", "objects")


def blob_files(data: Path) -> Iterator[Path]:
    """Every blob of the CAS kept under `data`."""
    return (p for p in (data / OBJECTS_SUBDIR).glob("*/*") if p.is_file())
