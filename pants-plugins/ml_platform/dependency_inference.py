"""Dependencies every `ml_model` gets without writing them: its entry point's file (a Python
module's `python_sources`, or the `resources` target that owns an R file), its folder's
requirements (all of them) and artifacts (ml_platform.model_folder), and the platform runtime."""

from __future__ import annotations

from dataclasses import dataclass

from ml_contract.runtimes import R, runtime_of
from ml_platform.model_folder import ModelFolderTargets, ModelFolderTargetsRequest
from ml_platform.subsystem import MLPlatform
from ml_platform.target_types import (
    MLModelDependenciesField,
    MLModelEntryPointField,
    MLModelResolveField,
)
from pants.backend.python.dependency_inference.module_mapper import (
    PythonModuleOwners,
    PythonModuleOwnersRequest,
)
from pants.backend.python.subsystems.setup import PythonSetup
from pants.backend.python.target_types import ResolvedPexEntryPoint, ResolvePexEntryPointRequest
from pants.engine.addresses import Addresses, UnparsedAddressInputs
from pants.engine.internals.graph import Owners, OwnersRequest
from pants.engine.rules import Get, collect_rules, rule
from pants.engine.target import FieldSet, InferDependenciesRequest, InferredDependencies
from pants.engine.unions import UnionRule


@dataclass(frozen=True)
class MLModelDependencyInferenceFieldSet(FieldSet):
    required_fields = (MLModelEntryPointField, MLModelDependenciesField, MLModelResolveField)

    entry_point: MLModelEntryPointField
    dependencies: MLModelDependenciesField
    resolve: MLModelResolveField


class InferMLModelDependencies(InferDependenciesRequest):
    infer_from = MLModelDependencyInferenceFieldSet


@dataclass(frozen=True)
class PlatformRuntime:
    """The address `[ml-platform].runtime` names: the runtime every model package ships."""

    addresses: Addresses


@rule
async def platform_runtime(ml_platform: MLPlatform) -> PlatformRuntime:
    return PlatformRuntime(await Get(
        Addresses,
        UnparsedAddressInputs(
            [ml_platform.runtime],
            owning_address=None,
            description_of_origin="the option `[ml-platform].runtime`",
        ),
    ))


@rule(desc="Inferring ml_model dependencies")
async def infer_ml_model_dependencies(
    request: InferMLModelDependencies, python_setup: PythonSetup, platform: PlatformRuntime
) -> InferredDependencies:
    field_set = request.field_set
    runtime = platform.addresses
    folder = await Get(ModelFolderTargets, ModelFolderTargetsRequest(field_set.entry_point))
    if runtime_of(field_set.entry_point.value.module) == R:
        # An R handler is a file (the target's value holds its path from the build root): the
        # `resources` target that owns it.
        owners = await Get(Owners, OwnersRequest((field_set.entry_point.value.module,)))
        return InferredDependencies([*owners, *folder.addresses, *runtime])
    entry_point = await Get(ResolvedPexEntryPoint, ResolvePexEntryPointRequest(field_set.entry_point))
    assert entry_point.val is not None  # the field is required
    owners = await Get(
        PythonModuleOwners,
        PythonModuleOwnersRequest(
            entry_point.val.module, resolve=field_set.resolve.normalized_value(python_setup)
        ),
    )
    return InferredDependencies([*owners.unambiguous, *folder.addresses, *runtime])


def rules():
    return (
        *collect_rules(),
        UnionRule(InferDependenciesRequest, InferMLModelDependencies),
    )
