"""What the vision models share: decoding an uploaded image, and the segments they answer
(label, score, box, area and a COCO run-length mask, never pixel arrays).

Needs pillow and numpy, which every vision model locks; importing this module needs neither.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from ml_shared import masks

MAX_PIXELS = 4096 * 4096  # larger images are refused before they are decoded


@dataclass
class Picture:
    image: bytes  # PNG or JPEG
    threshold: float = 0.5  # the lowest score returned

    def check(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold is {self.threshold}; it must be within 0-1")


@dataclass
class Rle:
    size: list[int]  # [height, width]
    counts: str  # COCO's compressed run-length string (pycocotools.mask.decode reads it)


@dataclass
class Segment:
    label: str
    score: float
    box: list[int]  # [x0, y0, x1, y1], pixels, x1 and y1 exclusive
    area: int  # pixels
    mask: Rle


@dataclass
class Segmentation:
    width: int
    height: int
    segments: list[Segment]


def decode_image(data: bytes) -> Any:
    """An RGB PIL image, or ValueError (the server's 422) saying why the bytes are not one."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_PIXELS:
            raise ValueError(f"the image is {image.width}x{image.height}; at most {MAX_PIXELS:,} pixels")
        return image.convert("RGB")
    except UnidentifiedImageError:
        raise ValueError("cannot decode the image: it is not a PNG or JPEG") from None
    except (OSError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot decode the image: {e}") from None


def segment(label: str, score: float, mask: Any) -> "Segment | None":
    """The segment of a boolean HxW mask (None when the mask is empty): its tight box, area
    and run-length encoding."""
    import numpy as np

    mask = np.asarray(mask, dtype=bool)
    area = int(mask.sum())
    if not area:
        return None
    ys, xs = np.nonzero(mask)
    box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
    return Segment(label, round(float(score), 4), box, area, Rle(**masks.encode(mask)))


def segmentation(width: int, height: int, segments: list["Segment | None"]) -> Segmentation:
    """The answer for one image: its non-empty segments, best score first."""
    kept = sorted((s for s in segments if s is not None), key=lambda s: -s.score)
    return Segmentation(width, height, kept)
