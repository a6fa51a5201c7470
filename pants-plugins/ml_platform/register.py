"""The ML platform backend: the `ml_model` target and how it is packaged, run, published and
deployed."""

from ml_platform import deploy, dependency_inference, image, package, publish, run
from ml_platform.target_types import MLModelTarget


def rules():
    return (
        *dependency_inference.rules(),
        *deploy.rules(),
        *image.rules(),
        *package.rules(),
        *publish.rules(),
        *run.rules(),
    )


def target_types():
    return (MLModelTarget,)
