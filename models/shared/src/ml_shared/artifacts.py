"""Finding a model's committed artifacts at serving time."""

from __future__ import annotations

from pathlib import Path


def artifact_path(model_file: str, name: str) -> Path:
    """Path of `artifacts/<name>` next to the model module `model_file` (pass `__file__`).

    Fails with what to fix rather than a bare FileNotFoundError from deep inside a loader.
    """
    path = Path(model_file).resolve().parent / "artifacts" / name
    if not path.is_file():
        raise FileNotFoundError(
            f"Model artifact {name!r} is missing (looked for {path}). Commit it under the "
            "model's artifacts/ folder and list that folder's `resources` target in the "
            "ml_model's dependencies."
        )
    return path
