"""Writes the model mask2former serves: a small Mask2Former universal-segmentation config (a
four-stage Swin backbone, 16 queries) with seeded random weights, as a Hugging Face model
folder, artifacts/mask2former/ (config.json, model.safetensors: about 3.5 MB).

No pretrained Mask2Former weights can be had on these machines, so the masks it answers are
meaningless; everything around them (decoding, batching, the segmentation post-processing,
the mask encoding) is real. To serve a real checkpoint, put its folder here instead (e.g.
`Mask2FormerForUniversalSegmentation.from_pretrained("facebook/mask2former-swin-tiny-coco-instance")
.save_pretrained("artifacts/mask2former")`): nothing else changes.

    ./pants run models/mask2former/src/export.py
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

OUT = Path(__file__).resolve().parent / "artifacts" / "mask2former"
LABELS = ["person", "bicycle", "car", "dog", "cat", "tree", "building", "sky"]
SEED = 0


def main() -> None:
    backbone = SwinConfig(embed_dim=24, depths=[1, 1, 1, 1], num_heads=[1, 2, 3, 6], window_size=7,
                          out_features=["stage1", "stage2", "stage3", "stage4"])
    config = Mask2FormerConfig(
        backbone_config=backbone, use_pretrained_backbone=False,
        num_labels=len(LABELS), id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)},
        num_queries=16, hidden_dim=64, mask_feature_size=64, feature_size=64, encoder_layers=1,
        decoder_layers=2, num_attention_heads=4, dim_feedforward=128, encoder_feedforward_dim=128,
    )
    torch.manual_seed(SEED)
    model = Mask2FormerForUniversalSegmentation(config).eval()
    model.save_pretrained(OUT)
    print(f"wrote {OUT}: {sum(p.numel() for p in model.parameters()):,} parameters, seed {SEED}")


if __name__ == "__main__":
    main()
