"""`pants run` for `ml_model` (package the model, then serve it on this machine) and for
`ml_r_script` (run an R script where it lies, with this machine's R)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ml_contract.package_layout import MODEL_PEX
from ml_platform.package import MLModelFieldSet, ModelPexes
from ml_platform.target_types import MLModelEntryPointField, MLRScriptSourceField
from pants.core.goals.run import RunFieldSet, RunInSandboxBehavior, RunRequest
from pants.core.util_rules.system_binaries import BinaryPathRequest, BinaryPaths, SearchPath
from pants.engine.env_vars import EnvironmentVars, EnvironmentVarsRequest
from pants.engine.fs import EMPTY_DIGEST
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


@dataclass(frozen=True)
class MLRScriptRunFieldSet(RunFieldSet):
    required_fields = (MLRScriptSourceField,)
    run_in_sandbox_behavior = RunInSandboxBehavior.NOT_SUPPORTED

    source: MLRScriptSourceField


# What to install when R is missing: the R models' packages come from Debian, as in their images.
R_MISSING = (
    "install R from Debian (`apt-get install --no-install-recommends r-base-core r-cran-jsonlite` "
    "and the model's `system_packages`; `.ci/install-deps` installs those of this repository's R "
    "models)"
)


@rule(desc="Preparing to run an R script")
async def run_r_script(field_set: MLRScriptRunFieldSet) -> RunRequest:
    path = await Get(EnvironmentVars, EnvironmentVarsRequest(["PATH"]))
    request = BinaryPathRequest(binary_name="Rscript", search_path=SearchPath(path.get("PATH", "").split(":")))
    rscript = (await Get(BinaryPaths, BinaryPathRequest, request)).first_path_or_raise(
        request, rationale=f"run {field_set.address}: {R_MISSING}"
    )
    # `pants run` starts in the repository's root: the script itself, not a sandbox's copy, so
    # that what it writes next to itself (a model's artifacts) lands in the repository.
    return RunRequest(digest=EMPTY_DIGEST, args=[rscript.path, field_set.source.file_path])


def rules():
    return (
        *collect_rules(),
        *MLModelRunFieldSet.rules(),
        *MLRScriptRunFieldSet.rules(),
        UnionRule(RunFieldSet, MLModelRunFieldSet),
        UnionRule(RunFieldSet, MLRScriptRunFieldSet),
    )
