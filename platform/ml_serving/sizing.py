"""How the workers are sized: how many, with how many math-library threads each, on which GPU.

The counts come from the model's manifest (derived from its declared cpu and gpu at package
time, `ml_contract.model_settings`), never from the host: on ECS on EC2, os.cpu_count() is the
instance's 48 cores, not the task's 4.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

from ml_contract.model_settings import THREAD_ENV_VARS

_GPU_DEVICE = re.compile(r"^nvidia(\d+)$")


def visible_gpus(environ: Optional[dict[str, str]] = None, dev: Path = Path("/dev")) -> list[str]:
    """The GPUs this process may use: CUDA_VISIBLE_DEVICES if set (ECS sets it for a task's
    GPUs), else the NVIDIA devices present; none on a CPU-only host."""
    environ = os.environ if environ is None else environ
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip() and d.strip() != "-1"]
    try:
        return sorted((m.group(1) for e in dev.iterdir() if (m := _GPU_DEVICE.match(e.name))), key=int)
    except OSError:
        return []


def worker_env(index: int, threads: int, gpus: list[str]) -> dict[str, str]:
    """What worker `index` runs with: its thread count for every math library, and one GPU of
    its own (round robin) when there are any; without GPUs the same image runs on the CPU."""
    env = {name: str(threads) for name in THREAD_ENV_VARS}
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    return env
