"""`pants run` for `ml_model` (package the model, then serve it on this machine) and for
`ml_r_script` (run an R script where it lies, with this machine's R)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from ml_contract.package_layout import MODEL_PEX
from ml_platform.dependency_inference import PlatformRuntime
from ml_platform.model_folder import REQUIREMENTS, REQUIREMENTS_TARGET, ModelFolderTargets, ModelFolderTargetsRequest
from ml_platform.package import MLModelFieldSet, ModelPexes
from ml_platform.target_types import MLModelEntryPointField, MLModelResolveField, MLRScriptSourceField
from pants.backend.python.subsystems.setup import PythonSetup
from pants.backend.python.target_types import PythonSourceField
from pants.core.target_types import ResourceSourceField
from pants.core.util_rules.distdir import DistDir
from pants.core.util_rules.source_files import SourceFiles, SourceFilesRequest
from pants.core.goals.run import RunFieldSet, RunInSandboxBehavior, RunRequest
from pants.core.util_rules.system_binaries import BinaryPathRequest, BinaryPaths, SearchPath
from pants.engine.env_vars import EnvironmentVars, EnvironmentVarsRequest
from pants.engine.fs import EMPTY_DIGEST
from pants.engine.rules import Get, MultiGet, collect_rules, rule
from pants.engine.target import (
    SourcesField,
    TransitiveTargets,
    TransitiveTargetsRequest,
    WrappedTarget,
    WrappedTargetRequest,
)
from pants.engine.unions import UnionRule
from pants.source.source_root import SourceRootsRequest, SourceRootsResult
from pants.util.docutil import bin_name


@dataclass(frozen=True)
class MLModelRunFieldSet(RunFieldSet):
    required_fields = (MLModelEntryPointField,)
    run_in_sandbox_behavior = RunInSandboxBehavior.NOT_SUPPORTED

    entry_point: MLModelEntryPointField
    resolve: MLModelResolveField


@dataclass(frozen=True)
class LiveReloadSources:
    """What `pants run` tells the server to watch: the source roots of the model's own code in
    the repository (not the platform runtime's) and the files whose change needs a rebuild."""

    roots: tuple[str, ...]
    rebuild_files: tuple[str, ...]


@rule(desc="Finding the sources an ml_model reloads from")
async def live_reload_sources(
    field_set: MLModelRunFieldSet, python_setup: PythonSetup, runtime: PlatformRuntime
) -> LiveReloadSources:
    closure, runtime_closure = await MultiGet(
        Get(TransitiveTargets, TransitiveTargetsRequest([field_set.address])),
        Get(TransitiveTargets, TransitiveTargetsRequest(runtime.addresses)),
    )
    runtime_addresses = {t.address for t in runtime_closure.closure}
    files = await Get(
        SourceFiles,
        SourceFilesRequest(
            (t[SourcesField] for t in closure.closure if t.has_field(SourcesField) and t.address not in runtime_addresses),
            for_sources_types=(PythonSourceField, ResourceSourceField),
        ),
    )
    roots = await Get(SourceRootsResult, SourceRootsRequest.for_files(files.files))
    resolve = field_set.resolve.normalized_value(python_setup)
    folder = await Get(ModelFolderTargets, ModelFolderTargetsRequest(field_set.entry_point))
    requirements = [os.path.join(a.spec_path, REQUIREMENTS) for a in folder.addresses if a.target_name == REQUIREMENTS_TARGET]
    return LiveReloadSources(
        tuple(sorted({str(root.path) for root in roots.path_to_root.values()})),
        (*requirements, python_setup.resolves[resolve]),
    )


@rule(desc="Preparing to serve an ml_model")
async def run_ml_model(field_set: MLModelRunFieldSet, dist_dir: DistDir) -> RunRequest:
    wrapped = await Get(
        WrappedTarget,
        WrappedTargetRequest(field_set.address, description_of_origin="the `run` goal"),
    )
    # Only the PEXes: serving on this machine needs no image.
    pexes, reload = await MultiGet(
        Get(ModelPexes, MLModelFieldSet, MLModelFieldSet.create(wrapped.target)),
        Get(LiveReloadSources, MLModelRunFieldSet, field_set),
    )
    model_pex = os.path.join("{chroot}", pexes.output_dir, MODEL_PEX)
    # The server prints its URL once the model is loaded; extra args go to the server
    # (`pants run models/iris: -- --port 9000`). It runs in the repository's root, watching the
    # model's sources there: an edit restarts its workers (ml_serving.reload).
    return RunRequest(
        digest=pexes.digest,
        args=[
            os.path.join(model_pex, "__main__.py"), "serve",
            *(arg for root in reload.roots for arg in ("--reload-root", root)),
            "--reload-base", model_pex,
            *(arg for path in reload.rebuild_files for arg in ("--reload-rebuild-file", path)),
            # A requirements change: the model's package again, where `package` puts it.
            "--reload-rebuild-command", json.dumps([bin_name(), "package", field_set.address.spec]),
            "--reload-rebuilt-package", os.path.join(str(dist_dir.relpath), pexes.output_dir, MODEL_PEX),
        ],
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
