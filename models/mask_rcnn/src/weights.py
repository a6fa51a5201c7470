"""Writes the weights mask_rcnn serves: torchvision's Mask R-CNN (ResNet-50 FPN, the Detectron
architecture and its COCO-sized heads) with seeded random weights, as a state dict,
artifacts/mask_rcnn/model.pt (about 176 MB: too big for git).

It is the ml_model's `artifacts_script`: `pants package` runs it at build time in the model's
own locked environment, as a cached process, and packages what it writes as if it were committed
next to model.py. The same torch build and seed give the same bytes, so a clone rebuilds the
image bit for bit without the file ever being in git.

No pretrained Mask R-CNN weights can be had on these machines, so the instances it answers are
meaningless; everything around them (decoding, the forward pass, post-processing, mask encoding,
batching, the GPU) is real. To serve real weights, fetch a checkpoint pinned by sha256 instead
(see the README): nothing else changes.

    ./pants run models/mask_rcnn/src/weights.py -- <output dir>   (default: next to this file)
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torchvision.models.detection import maskrcnn_resnet50_fpn

# Which file, which labels, which input size: read by model.py too.
WEIGHTS = Path("artifacts") / "mask_rcnn" / "model.pt"
LABELS = ["person", "bicycle", "car", "dog", "cat", "tree", "building", "sky"]
MIN_SIZE, MAX_SIZE = 480, 640  # the shorter and the longest edge the network sees
SEED = 0


def build() -> torch.nn.Module:
    """The network, untrained: background plus LABELS."""
    return maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=len(LABELS) + 1,
                                 min_size=MIN_SIZE, max_size=MAX_SIZE)


def main(argv: list[str]) -> int:
    out = (Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent) / WEIGHTS
    torch.manual_seed(SEED)
    model = build()
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)
    print(f"wrote {out}: {sum(p.numel() for p in model.parameters()):,} parameters, seed {SEED}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
