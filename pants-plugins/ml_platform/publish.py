"""`pants publish` for `ml_model`: push the model's image to the configured registry over the
OCI distribution API. Blobs the registry already has are skipped, so after a code change only
the code layer, the config and the manifest travel."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ml_contract.package_layout import IMAGE_LAYOUT
from ml_platform.image import REGISTRY_ENV, ImageTools, ImageToolsRequest
from ml_platform.subsystem import MLPlatform
from ml_platform.target_types import MLModelEntryPointField, MLModelVersionField
from pants.backend.python.util_rules.pex import PexProcess
from pants.core.goals.publish import (
    PublishFieldSet,
    PublishOutputData,
    PublishPackages,
    PublishProcesses,
    PublishRequest,
)
from pants.engine.env_vars import EnvironmentVars, EnvironmentVarsRequest
from pants.engine.process import InteractiveProcess, Process
from pants.engine.rules import Get, collect_rules, rule
from pants.util.logging import LogLevel

class PublishMLModelRequest(PublishRequest):
    pass


@dataclass(frozen=True)
class PublishMLModelFieldSet(PublishFieldSet):
    publish_request_type = PublishMLModelRequest
    required_fields = (MLModelEntryPointField,)

    entry_point: MLModelEntryPointField
    version: MLModelVersionField

    def get_output_data(self) -> PublishOutputData:
        return PublishOutputData({"publisher": "oci-registry", **super().get_output_data()})


def image_reference(ml_platform: MLPlatform, name: str, version: int) -> str:
    repository = ml_platform.image_repository.format(name=name)
    return f"{ml_platform.registry}/{repository}:v{version}"


@rule(desc="Preparing to push an ml_model image", level=LogLevel.DEBUG)
async def publish_ml_model(request: PublishMLModelRequest, ml_platform: MLPlatform) -> PublishProcesses:
    field_set = request.field_set
    reference = image_reference(ml_platform, field_set.address.target_name, field_set.version.value)
    if not ml_platform.registry:
        return PublishProcesses([PublishPackages(
            names=(reference.lstrip("/"),),
            description="(skipped: set [ml-platform].registry in pants.toml or --ml-platform-registry)",
        )])
    if not ml_platform.build_images:
        return PublishProcesses([PublishPackages(
            names=(reference,), description="(skipped: [ml-platform].build_images is off)",
        )])
    (package,) = request.packages
    (artifact,) = package.artifacts
    assert artifact.relpath is not None
    tools, env = await Get(ImageTools, ImageToolsRequest()), await Get(
        EnvironmentVars, EnvironmentVarsRequest(REGISTRY_ENV)
    )
    process = await Get(
        Process,
        PexProcess(
            tools.pex,
            # The tool recognises ECR hosts itself (auth, creating the repository).
            argv=("push", os.path.join(artifact.relpath, IMAGE_LAYOUT), reference),
            input_digest=package.digest,
            extra_env={**env, "PEX_MODULE": "ml_image.registry"},
            description=f"Pushing {reference}",
        ),
    )
    return PublishProcesses([PublishPackages(
        names=(reference,), process=InteractiveProcess.from_process(process),
    )])


def rules():
    return (*collect_rules(), *PublishMLModelFieldSet.rules())
