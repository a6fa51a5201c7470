"""mask2former: universal segmentation (instances) with Mask2Former through transformers, on the
CPU build of torch. An image in (a raw image/png, image/jpeg or octet-stream body, or base64 in
JSON), its segments out: label, score, box and a COCO run-length mask, never pixel arrays.

The weights are seeded random ones (see export.py): no pretrained Mask2Former weights can be
had here, so the segments are meaningless, and the API says so.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessorPil

from ml_shared.vision import Picture, Segmentation, decode_image, segment, segmentation

WEIGHTS = Path(__file__).resolve().parent / "artifacts" / "mask2former"
SHORTEST_EDGE, LONGEST_EDGE = 256, 512  # what the model sees; segments come back at full size


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
            r.check()
        images = [decode_image(r.image) for r in requests]
        inputs = self.processor(images=images, return_tensors="pt")
        with torch.inference_mode():
            outputs = self.model(**inputs)
        results = self.processor.post_process_instance_segmentation(
            outputs, target_sizes=[(i.height, i.width) for i in images], threshold=0.0, return_binary_maps=True)
        return [self._segmentation(image, result, r.threshold)
                for image, result, r in zip(images, results, requests)]

    def _segmentation(self, image, result: dict, threshold: float) -> Segmentation:
        maps = result["segmentation"]
        segments = [] if maps is None else [
            segment(self.labels[info["label_id"]], info["score"], maps[index].numpy())
            for index, info in enumerate(result["segments_info"]) if info["score"] >= threshold]
        return segmentation(image.width, image.height, segments)
