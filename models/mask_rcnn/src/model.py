"""mask_rcnn: instance segmentation with torchvision's Mask R-CNN (the Detectron algorithm;
Detectron2 is not on PyPI) on the CUDA build of torch. An image in (a raw image/png, image/jpeg
or octet-stream body, or base64 in JSON), its instances out: label, score, box and a COCO
run-length mask, never pixel arrays.

It runs on the GPU when the host has one (each worker gets its own, CUDA_VISIBLE_DEVICES) and on
the CPU otherwise, from the same image. The weights are seeded random ones generated at build
time (weights.py): the instances are meaningless, and the API says so.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.transforms.functional import pil_to_tensor

from ml_shared.vision import Picture, Segmentation, decode_image, segment, segmentation
from weights import LABELS, WEIGHTS, build

MASK_THRESHOLD = 0.5  # a pixel belongs to an instance where its mask probability is above this


class Model:
    batched_endpoints = {"predict": {"max_batch_size": 4, "max_wait_ms": 10}}

    def load(self) -> None:
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        weights = Path(__file__).resolve().parent / WEIGHTS
        self.model = build()
        self.model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        self.model.eval().to(self.device)
        print(f"mask_rcnn: serving on {self.device}", flush=True)  # a worker's stdout is its log

    def predict(self, requests: list[Picture]) -> list[Segmentation]:
        """Segment an image into instances: labels, scores, boxes and masks (random weights)."""
        for r in requests:
            r.check()
        images = [decode_image(r.image) for r in requests]
        tensors = [pil_to_tensor(i).to(self.device, torch.float32).div_(255) for i in images]
        with torch.inference_mode():
            outputs = self.model(tensors)
        return [self._segmentation(image, output, r.threshold)
                for image, output, r in zip(images, outputs, requests)]

    def _segmentation(self, image, output: dict, threshold: float) -> Segmentation:
        keep = output["scores"] >= threshold
        masks = (output["masks"][keep, 0] > MASK_THRESHOLD).cpu().numpy()
        labels = output["labels"][keep].tolist()
        scores = output["scores"][keep].tolist()
        return segmentation(image.width, image.height, [
            segment(LABELS[label - 1], score, mask) for label, score, mask in zip(labels, scores, masks)])
