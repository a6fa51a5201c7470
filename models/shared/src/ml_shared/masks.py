"""Masks as COCO run-length encoding: what the vision models answer instead of pixel arrays.

A mask of height h and width w is read column by column (COCO's Fortran order) as alternating
runs of 0s and 1s, starting with 0s; `counts` is those run lengths in COCO's compressed string
form (pycocotools' `mask.encode`/`decode` read and write the same `{"size": [h, w], "counts": ...}`).
Needs numpy, which every model that has masks locks; importing this module does not.
"""

from __future__ import annotations

from typing import Any


def run_lengths(mask: Any) -> list[int]:
    """The 0/1 runs of a 2-D mask in column-major order, starting with a run of 0s."""
    import numpy as np

    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    if flat.size == 0:
        return [0]
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], changes, [flat.size]))
    runs = np.diff(bounds).tolist()
    return [0, *runs] if flat[0] else runs


def encode_counts(runs: list[int]) -> str:
    """COCO's compressed string of run lengths: each as the difference from the run two before
    (after the first three), in little-endian groups of 5 bits, 0x20 meaning "more follows",
    offset by 48 into printable ASCII."""
    out = []
    for i, run in enumerate(runs):
        x = run - runs[i - 2] if i > 2 else run
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic: a negative difference ends in -1
            more = x != -1 if c & 0x10 else x != 0
            out.append(chr((c | 0x20 if more else c) + 48))
    return "".join(out)


def decode_counts(counts: str) -> list[int]:
    runs: list[int] = []
    position = 0
    while position < len(counts):
        x, shift, more = 0, 0, True
        while more:
            c = ord(counts[position]) - 48
            x |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            position += 1
            shift += 5
            if not more and c & 0x10:
                x |= -1 << shift
        runs.append(x + runs[-2] if len(runs) > 2 else x)
    return runs


def encode(mask: Any) -> dict[str, Any]:
    """`{"size": [h, w], "counts": "..."}` of a 2-D mask."""
    height, width = (int(n) for n in mask.shape)
    return {"size": [height, width], "counts": encode_counts(run_lengths(mask))}


def decode(rle: dict[str, Any]) -> Any:
    """The boolean mask an `encode` result stands for."""
    import numpy as np

    height, width = rle["size"]
    values = np.zeros(height * width, dtype=bool)
    position, value = 0, False
    for run in decode_counts(rle["counts"]):
        values[position:position + run] = value
        position += run
        value = not value
    return values.reshape((height, width), order="F")
