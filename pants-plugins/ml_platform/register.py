"""The ML platform backend: the `ml_model` target and how it is packaged."""

from ml_platform import dependency_inference, image, package, publish, run
from ml_platform.target_types import MLModelTarget


def rules():
    return (*dependency_inference.rules(), *image.rules(), *package.rules(), *publish.rules(), *run.rules())


def target_types():
    return (MLModelTarget,)
