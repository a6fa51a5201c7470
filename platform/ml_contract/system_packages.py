"""A model's system-packages lock, as the plugin checks it and the image tool builds from it
(ml_image.system_packages writes it): where it is, how to regenerate it, when it is stale, and
what its layer is built from."""

from __future__ import annotations

import hashlib
from typing import Iterable, Mapping, Optional

from ml_contract.package_layout import SYSTEM_PACKAGES_LOCK

LOCK_COMMAND = "PYTHONPATH=platform python3 -m ml_image.system_packages"


def lock_path(model_dir: str) -> str:
    return f"{model_dir}/{SYSTEM_PACKAGES_LOCK}" if model_dir else SYSTEM_PACKAGES_LOCK


def lock_command(model_dir: str, packages: Iterable[str]) -> str:
    """The line that (re)writes the lock of the model in `model_dir`, run from the repository root."""
    return f"{LOCK_COMMAND} {model_dir or '.'} {' '.join(sorted(set(packages)))}"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stale_reason(lock: Mapping, packages: Iterable[str], base_lock: bytes) -> Optional[str]:
    """Why `lock` is not the lock of `packages` on the base whose lock file is `base_lock`, or None."""
    wanted = sorted(set(packages))
    if lock.get("roots") != wanted:
        return f"it locks {', '.join(lock.get('roots') or []) or 'nothing'}, not {', '.join(wanted)}"
    if lock.get("base_lock_sha256") != sha256_hex(base_lock):
        return "the base image's lock has changed since it was written"
    return None


def layer_input(lock: Mapping) -> dict:
    """What the layer is built from: the packages alone, not which model asked for them, so two
    models with the same packages share one layer."""
    return {"distribution": lock["distribution"], "architecture": lock["architecture"],
            "packages": lock["packages"]}
