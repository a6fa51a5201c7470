"""mask2former: universal segmentation (instances) with Mask2Former through transformers, on the
CPU build of torch. An image in (a raw image/png, image/jpeg or octet-stream body, or base64 in
JSON), its segments out: label, score, box and a COCO run-length mask, never pixel arrays.

The weights are seeded random ones (see export.py): no pretrained Mask2Former weights can be
had here, so the segments are meaningless, and the API says so.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from transformers import Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessorPil

from ml_shared import masks

WEIGHTS = Path(__file__).resolve().parent / "artifacts" / "mask2former"
MAX_PIXELS = 4096 * 4096  # larger images are refused before they are decoded
SHORTEST_EDGE, LONGEST_EDGE = 256, 512  # what the model sees; segments come back at full size


@dataclass
class Picture:
    image: bytes  # PNG or JPEG
    threshold: float = 0.5  # the lowest score returned


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


def decode_image(data: bytes) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_PIXELS:
            raise ValueError(f"the image is {image.width}x{image.height}; at most {MAX_PIXELS:,} pixels")
        return image.convert("RGB")
    except UnidentifiedImageError:
        raise ValueError("cannot decode the image: it is not a PNG or JPEG") from None
    except (OSError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot decode the image: {e}") from None


class Model:
    batched_endpoints = {"predict": {"max_batch_size": 4, "max_wait_ms": 10}}

    def load(self) -> None:
        self.model = Mask2FormerForUniversalSegmentation.from_pretrained(WEIGHTS).eval()
        self.processor = Mask2FormerImageProcessorPil(
            size={"shortest_edge": SHORTEST_EDGE, "longest_edge": LONGEST_EDGE})
        self.labels = self.model.config.id2label

    def predict(self, requests: list[Picture]) -> list[Segmentation]:
        """Segment an image: labelled instances with scores, boxes and masks (random weights)."""
        for r in requests:
            if not 0.0 <= r.threshold <= 1.0:
                raise ValueError(f"threshold is {r.threshold}; it must be within 0-1")
        images = [decode_image(r.image) for r in requests]
        inputs = self.processor(images=images, return_tensors="pt")
        with torch.inference_mode():
            outputs = self.model(**inputs)
        results = self.processor.post_process_instance_segmentation(
            outputs, target_sizes=[(i.height, i.width) for i in images], threshold=0.0, return_binary_maps=True)
        return [self._segmentation(image, result, r.threshold)
                for image, result, r in zip(images, results, requests)]

    def _segmentation(self, image: Image.Image, result: dict, threshold: float) -> Segmentation:
        segments = []
        maps = result["segmentation"]
        for index, info in enumerate(result["segments_info"]):
            if info["score"] < threshold or maps is None:
                continue
            mask = maps[index].numpy().astype(bool)
            area = int(mask.sum())
            if not area:
                continue
            ys, xs = np.nonzero(mask)
            box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
            segments.append(Segment(self.labels[info["label_id"]], round(float(info["score"]), 4), box, area,
                                    Rle(**masks.encode(mask))))
        segments.sort(key=lambda s: -s.score)
        return Segmentation(image.width, image.height, segments)
