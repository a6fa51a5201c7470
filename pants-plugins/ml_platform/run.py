"""`pants run` for `ml_model`: package the model, then serve it on this machine."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ml_contract.package_layout import MODEL_PEX
from ml_platform.package import MLModelFieldSet, ModelPexes
from ml_platform.target_types import MLModelEntryPointField
from pants.core.goals.run import RunFieldSet, RunInSandboxBehavior, RunRequest
from pants.engine.rules import Get, collect_rules, rule
from pants.engine.target import WrappedTarget, WrappedTargetRequest
from pants.engine.unions import UnionRule


@dataclass(frozen=True)
class MLModelRunFieldSet(RunFieldSet):
    required_fields = (MLModelEntryPointField,)
    run_in_sandbox_behavior = RunInSandboxBehavior.NOT_SUPPORTED

    entry_point: MLModelEntryPointField


@rule(desc="Preparing to serve an ml_model")
async def run_ml_model(field_set: MLModelRunFieldSet) -> RunRequest:
    wrapped = await Get(
        WrappedTarget,
        WrappedTargetRequest(field_set.address, description_of_origin="the `run` goal"),
    )
    # Only the PEXes: serving on this machine needs no image.
    pexes = await Get(ModelPexes, MLModelFieldSet, MLModelFieldSet.create(wrapped.target))
    # The server prints its URL once the model is loaded; extra args go to the server
    # (`pants run models/iris: -- --port 9000`).
    return RunRequest(
        digest=pexes.digest,
        args=[os.path.join("{chroot}", pexes.output_dir, MODEL_PEX, "__main__.py"), "serve"],
    )


def rules():
    return (*collect_rules(), *MLModelRunFieldSet.rules(), UnionRule(RunFieldSet, MLModelRunFieldSet))
