"""Dependencies every `ml_model` gets without writing them: its entry point's file and the
platform runtime."""

from __future__ import annotations

from dataclasses import dataclass

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
from pants.engine.rules import Get, MultiGet, collect_rules, rule
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


@rule(desc="Inferring ml_model dependencies")
async def infer_ml_model_dependencies(
    request: InferMLModelDependencies, python_setup: PythonSetup, ml_platform: MLPlatform
) -> InferredDependencies:
    field_set = request.field_set
    entry_point, runtime = await MultiGet(
        Get(ResolvedPexEntryPoint, ResolvePexEntryPointRequest(field_set.entry_point)),
        Get(
            Addresses,
            UnparsedAddressInputs(
                [ml_platform.runtime],
                owning_address=None,
                description_of_origin="the option `[ml-platform].runtime`",
            ),
        ),
    )
    assert entry_point.val is not None  # the field is required
    owners = await Get(
        PythonModuleOwners,
        PythonModuleOwnersRequest(
            entry_point.val.module, resolve=field_set.resolve.normalized_value(python_setup)
        ),
    )
    return InferredDependencies([*owners.unambiguous, *runtime])


def rules():
    return (
        *collect_rules(),
        UnionRule(InferDependenciesRequest, InferMLModelDependencies),
    )
