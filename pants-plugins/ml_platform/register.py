"""The ML platform backend: the `ml_model` target, the targets of its folder, and how it is
packaged, run, published and deployed."""

from ml_platform import deploy, dependency_inference, image, model_folder, package, publish, run, tailor
from ml_platform.model_folder import ml_model_addresses, ml_model_resolves
from ml_platform.machine_env import machine_test_env
from ml_platform.target_types import MLModelTarget, MLRScriptTarget
from pants.build_graph.build_file_aliases import BuildFileAliases


def rules():
    return (
        *dependency_inference.rules(),
        *deploy.rules(),
        *image.rules(),
        *model_folder.rules(),
        *package.rules(),
        *publish.rules(),
        *run.rules(),
        *tailor.rules(),
    )


def target_types():
    return (MLModelTarget, MLRScriptTarget)


def build_file_aliases():
    return BuildFileAliases(objects={
        "ml_model_resolves": ml_model_resolves,
        "ml_model_addresses": ml_model_addresses,
        "machine_test_env": machine_test_env,
    })
