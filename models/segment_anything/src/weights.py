"""Writes the checkpoint segment_anything serves: Segment-Anything with a small image encoder
(a ViT of 192-dim embeddings, 4 blocks, 3 heads, global attention in blocks 1 and 3) and the
real prompt encoder and mask decoder, with seeded random weights, as a state dict,
artifacts/segment_anything/sam_small.pth (about 46 MB: too big for git). The image embedding
has SAM's real shape, 256x64x64, so everything downstream of the encoder is the real pipeline.

It is the ml_model's `artifacts_script`: `pants package` runs it at build time in the model's
own locked environment, as a cached process (the same seed and torch build give the same bytes).
No SAM weights can be had here; the official checkpoints drop in (see the README): set
SAM_ARCH=vit_b (or vit_l, vit_h) and SAM_CHECKPOINT to the file, nothing else changes.

    ./pants run models/segment_anything/src/weights.py -- [<output dir> [<architecture>]]

(default: next to this file, "small"); bench/segment_anything.py writes a random vit_b this way
to time the real architecture.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import torch
from segment_anything.build_sam import _build_sam  # the builder the vit_* registry entries call

# The image encoders: the official ones (their checkpoints are a drop-in) and the small one.
ARCHITECTURES = {
    "small": dict(encoder_embed_dim=192, encoder_depth=4, encoder_num_heads=3, encoder_global_attn_indexes=[1, 3]),
    "vit_b": dict(encoder_embed_dim=768, encoder_depth=12, encoder_num_heads=12, encoder_global_attn_indexes=[2, 5, 8, 11]),
    "vit_l": dict(encoder_embed_dim=1024, encoder_depth=24, encoder_num_heads=16, encoder_global_attn_indexes=[5, 11, 17, 23]),
    "vit_h": dict(encoder_embed_dim=1280, encoder_depth=32, encoder_num_heads=16, encoder_global_attn_indexes=[7, 15, 23, 31]),
}
SEED = 0


def checkpoint(architecture: str) -> Path:
    """Where the generated checkpoint of `architecture` goes, under the output directory."""
    return Path("artifacts") / "segment_anything" / f"sam_{architecture}.pth"


CHECKPOINT = checkpoint("small")  # the one the model serves


def build(architecture: str, checkpoint: Optional[Path] = None) -> torch.nn.Module:
    if architecture not in ARCHITECTURES:
        raise ValueError(f"SAM_ARCH is {architecture!r}: one of {', '.join(ARCHITECTURES)}")
    return _build_sam(**ARCHITECTURES[architecture], checkpoint=str(checkpoint) if checkpoint else None)


def main(argv: list[str]) -> int:
    architecture = argv[2] if len(argv) > 2 else "small"
    out = (Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent) / checkpoint(architecture)
    torch.manual_seed(SEED)
    sam = build(architecture)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sam.state_dict(), out)
    print(f"wrote {out}: {sum(p.numel() for p in sam.parameters()):,} parameters, seed {SEED}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
