from __future__ import annotations

import numpy as np
import pytest

from ml_shared import masks


@pytest.mark.parametrize("seed, shape", [(0, (5, 7)), (1, (64, 48)), (2, (1, 1)), (3, (480, 640))])
def test_masks_round_trip(seed: int, shape: tuple) -> None:
    mask = np.random.RandomState(seed).rand(*shape) > 0.7
    rle = masks.encode(mask)
    assert rle["size"] == list(shape) and isinstance(rle["counts"], str)
    assert (masks.decode(rle) == mask).all()
    assert sum(masks.run_lengths(mask)) == mask.size


def test_runs_are_column_major_and_start_with_zeros() -> None:
    mask = np.array([[1, 0], [1, 1]], dtype=bool)  # columns: [1, 1], [0, 1]
    assert masks.run_lengths(mask) == [0, 2, 1, 1]
    assert masks.run_lengths(np.zeros((2, 3), bool)) == [6]


def test_the_compressed_string_is_cocos() -> None:
    # pycocotools.mask.encode of a 4x4 mask with a 2x2 square at rows 1-2, columns 1-2.
    mask = np.zeros((4, 4), dtype=bool)
    mask[1:3, 1:3] = True
    assert masks.run_lengths(mask) == [5, 2, 2, 2, 5]
    assert masks.encode(mask)["counts"] == "52203"
    assert masks.decode_counts("52203") == [5, 2, 2, 2, 5]
