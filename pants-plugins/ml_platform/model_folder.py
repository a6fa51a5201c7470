"""A model's folder from its one BUILD file: the targets of a model's code, requirements,
artifacts, training script and data, made by the plugin from its `ml_model` target.

The model's code lives in the folder of its entry point's file (`src/` by convention):

    models/<name>/BUILD               ml_model(entry_point="src/model.py:Model", artifacts=..., ...)
    models/<name>/src/model.py        the handler (or model.R), with any modules it imports
    models/<name>/src/requirements.txt  every requirement, all of them packaged
    models/<name>/src/train.py        retrains in place: ./pants run models/<name>/src/train.py

Pants gets these targets in `models/<name>/src` as if a BUILD file there declared them (Pants'
synthetic targets), from the `ml_model`'s fields:

    :src        python_sources: every .py file but tests and the training script
    :reqs       python_requirements of requirements.txt (when there is one)
    :artifacts  resources: the `artifacts` globs (and an R model's R file)
    :train      the `train` script: a python_source run where it lies, or an ml_r_script
    :data       files: the `data` globs (examples, training data), never shipped

They are in `src/`, not beside the `ml_model`, because Pants' `run` needs exactly one runnable
target in `models/<name>:`, and Python files and requirements are runnable. A BUILD file in
`src/` may still declare a target of the same name: it replaces the made one.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional

from ml_contract.runtimes import R, runtime_of
from ml_platform.target_types import (
    MLModelArtifactsField,
    MLModelEntryPointField,
    MLModelDataField,
    MLModelModuleMappingField,
    MLModelTarget,
    MLModelTrainField,
    MLRScriptTarget,
)
from pants.backend.python.macros.python_requirements import PythonRequirementsTargetGenerator
from pants.backend.python.target_types import PythonSourcesGeneratorTarget
from pants.core.target_types import FilesGeneratorTarget, ResourcesGeneratorTarget
from pants.engine.addresses import Address
from pants.engine.fs import DigestContents, PathGlobs, Paths
from pants.engine.internals.build_files import AddressFamilyDir, OptionalAddressFamily
from pants.engine.internals.synthetic_targets import (
    SyntheticAddressMaps,
    SyntheticTargetsRequest,
    SyntheticTargetsSpecPaths,
)
from pants.engine.internals.target_adaptor import TargetAdaptor
from pants.engine.rules import Get, collect_rules, rule
from pants.engine.target import InvalidFieldException

REQUIREMENTS = "requirements.txt"
# Where a model's code lies by convention (any folder works; `tailor` and globs look here).
CODE_DIR = "src"
# The names of the targets made in the code's folder; `ml_model`'s inference depends on these.
SOURCES, REQUIREMENTS_TARGET, ARTIFACTS, TRAIN, DATA = "src", "reqs", "artifacts", "train", "data"


@dataclass(frozen=True)
class ModelFolder:
    """What an `ml_model` target's raw fields say of the folder of its code."""

    model_dir: str  # the BUILD file's folder
    name: str
    code_dir: str  # the entry point file's folder, relative to the repository
    runtime: str
    resolve: str
    artifacts: tuple[str, ...]  # globs relative to code_dir
    train: Optional[str]  # relative to code_dir
    data: tuple[str, ...]
    module_mapping: Mapping[str, Any]
    entry_file: str  # relative to code_dir

    @classmethod
    def of(cls, model_dir: str, adaptor: TargetAdaptor) -> Optional[ModelFolder]:
        """None for an entry point given as a module (`package.module:Class`): no folder."""
        entry_point = adaptor.kwargs.get("entry_point")
        if not isinstance(entry_point, str):
            return None
        entry_file = entry_point.split(":", 1)[0]
        if not entry_file.endswith((".py", ".R")):
            return None
        name = adaptor.name or os.path.basename(model_dir)
        code = os.path.dirname(entry_file)
        where = f"target {model_dir}:{name}"

        def inside(field: str, path: str) -> str:
            relative = os.path.relpath(os.path.normpath(path.lstrip("!")), code or ".")
            if relative.startswith(".."):
                raise InvalidFieldException(
                    f"The `{field}` field in {where} holds {path!r}, outside `{code or '.'}/`, the "
                    f"folder of the entry point's file: a model's files live beside its code. "
                    f"Move the file, or write its path as `{code}/...`."
                )
            return ("!" if path.startswith("!") else "") + relative

        def globs(field: str) -> tuple[str, ...]:
            value = adaptor.kwargs.get(field) or ()
            if isinstance(value, str):
                raise InvalidFieldException(f"The `{field}` field in {where} must be a list of globs, e.g. [{value!r}].")
            return tuple(inside(field, g) for g in value)

        train = adaptor.kwargs.get(MLModelTrainField.alias)
        return cls(
            model_dir=model_dir,
            name=name,
            code_dir=os.path.normpath(os.path.join(model_dir, code)),
            runtime=runtime_of(entry_file),
            resolve=adaptor.kwargs.get("resolve") or name,
            artifacts=globs(MLModelArtifactsField.alias),
            train=inside(MLModelTrainField.alias, train) if train else None,
            data=globs(MLModelDataField.alias),
            module_mapping=dict(adaptor.kwargs.get(MLModelModuleMappingField.alias) or {}),
            entry_file=os.path.relpath(entry_file, code or "."),
        )

    def adaptors(self, code_files: Iterable[str]) -> list[TargetAdaptor]:
        """The targets of the code's folder; `code_files` are the files in it, relative to it."""
        origin = f"the ml_model {self.model_dir}:{self.name} (ml_platform/model_folder.py)"
        files = set(code_files)
        made = []
        if self.runtime != R:
            made.append(TargetAdaptor(
                PythonSourcesGeneratorTarget.alias, SOURCES, origin, resolve=self.resolve,
                sources=["**/*.py", "!**/*_test.py", *([f"!{self.train}"] if self.train else [])],
            ))
            if REQUIREMENTS in files:
                made.append(TargetAdaptor(
                    PythonRequirementsTargetGenerator.alias, REQUIREMENTS_TARGET, origin,
                    source=REQUIREMENTS, resolve=self.resolve, module_mapping=self.module_mapping,
                ))
        shipped = [*([self.entry_file] if self.runtime == R else []), *self.artifacts]
        if shipped:
            made.append(TargetAdaptor(ResourcesGeneratorTarget.alias, ARTIFACTS, origin, sources=shipped))
        if self.train and runtime_of(self.train) == R:
            made.append(TargetAdaptor(MLRScriptTarget.alias, TRAIN, origin, source=self.train))
        elif self.train:
            # Where it lies, not in a sandbox: it writes the model's artifacts into the folder.
            made.append(TargetAdaptor(
                PythonSourcesGeneratorTarget.alias, TRAIN, origin, sources=[self.train],
                resolve=self.resolve, run_goal_use_sandbox=False,
                dependencies=[f":{REQUIREMENTS_TARGET}"] if REQUIREMENTS in files else [],
            ))
        if self.data:
            made.append(TargetAdaptor(FilesGeneratorTarget.alias, DATA, origin, sources=list(self.data)))
        return made


def model_folders(model_dir: str, family: OptionalAddressFamily) -> list[ModelFolder]:
    if family.address_family is None:
        return []
    folders = []
    for _, adaptor in family.address_family.name_to_target_adaptors.values():
        if adaptor.type_alias == MLModelTarget.alias:
            folder = ModelFolder.of(model_dir, adaptor)
            if folder is not None:
                folders.append(folder)
    return folders


@dataclass(frozen=True)
class ModelFolderTargetsRequest:
    entry_point: MLModelEntryPointField


@dataclass(frozen=True)
class ModelFolderTargets:
    """What the model's folder holds of what the model depends on as a whole: its requirements
    (every one: a pickled artifact needs the packages that wrote it, imported or not) and its
    artifacts."""

    addresses: tuple[Address, ...]


@rule
async def model_folder_targets_of(request: ModelFolderTargetsRequest) -> ModelFolderTargets:
    module = request.entry_point.value.module
    if runtime_of(module) == R:
        code_dir = os.path.dirname(module)  # an R file's path is from the build root
    elif module.endswith(".py"):
        code_dir = os.path.normpath(os.path.join(request.entry_point.address.spec_path, os.path.dirname(module)))
    else:
        return ModelFolderTargets(())  # a module by name (`package.module:Model`): no folder
    family = await Get(OptionalAddressFamily, AddressFamilyDir(code_dir))
    present = set() if family.address_family is None else set(family.address_family.name_to_target_adaptors)
    return ModelFolderTargets(tuple(
        Address(code_dir, target_name=name) for name in (REQUIREMENTS_TARGET, ARTIFACTS) if name in present
    ))


class ModelFolderSpecPathsRequest:
    pass


@dataclass(frozen=True)
class ModelFolderSyntheticTargetsRequest(SyntheticTargetsRequest):
    path: str = SyntheticTargetsRequest.REQUEST_TARGETS_PER_DIRECTORY
    spec_paths_request = ModelFolderSpecPathsRequest


# An ml_model's entry point file in a BUILD file's text (`entry_point="src/model.py:Model"`).
ENTRY_POINT_FILE = re.compile(r"""entry_point\s*=\s*["']([^"':]+\.(?:py|R))\b""")


@rule
async def model_folder_spec_paths(_: ModelFolderSpecPathsRequest) -> SyntheticTargetsSpecPaths:
    # The code folders of the ml_models, for globs like `models::` and for finding the owners
    # of a changed file (they have no BUILD file). Read from the BUILD files' text: parsing
    # them here would need these very paths. An entry point written otherwise (a variable) is
    # missed here only: its targets still resolve by address.
    builds = await Get(DigestContents, PathGlobs(["**/BUILD"]))
    return SyntheticTargetsSpecPaths.from_paths(
        os.path.normpath(os.path.join(os.path.dirname(build.path), os.path.dirname(entry_file)))
        for build in builds
        for entry_file in ENTRY_POINT_FILE.findall(build.content.decode(errors="replace"))
        if os.path.dirname(entry_file)
    )


@rule
async def model_folder_synthetic_targets(request: ModelFolderSyntheticTargetsRequest) -> SyntheticAddressMaps:
    if not request.path:
        return SyntheticAddressMaps()
    parent = os.path.dirname(request.path)
    family = await Get(OptionalAddressFamily, AddressFamilyDir(parent))
    folders = [f for f in model_folders(parent, family) if f.code_dir == request.path]
    if not folders:
        return SyntheticAddressMaps()
    if len(folders) > 1:
        raise InvalidFieldException(
            f"The ml_model targets {', '.join(f'{parent}:{f.name}' for f in folders)} share the code "
            f"folder {request.path}: give each model a folder of its own."
        )
    (folder,) = folders
    files = await Get(Paths, PathGlobs([os.path.join(request.path, "*")]))
    adaptors = folder.adaptors(os.path.basename(f) for f in files.files)
    return SyntheticAddressMaps.for_targets_request(request, [(f"BUILD.{folder.name}-model", adaptors)])


def rules():
    return (*collect_rules(), *ModelFolderSyntheticTargetsRequest.rules())


def _model_lockfiles(config: str) -> list[tuple[str, str]]:
    """(resolve, lockfile) of pants.toml's [python.resolves] whose lockfile lies under models/.
    Plain text: the plugin's Python 3.9 has no TOML reader of its own."""
    found = []
    section = None
    with open(config, encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line.startswith("["):
                section = line
            elif section == "[python.resolves]" and "=" in line:
                key, value = (part.strip().strip('"') for part in line.split("=", 1))
                if value.startswith("models/"):
                    found.append((key, value))
    return found


def ml_model_resolves(config: str = "pants.toml") -> tuple[str, ...]:
    """The models' own resolves: pants.toml's whose lockfile lies under models/. Code shared
    between models (`models/shared`) is parametrized over them, so a new model imports it with
    no edit there. A BUILD file symbol: BUILD files are read in the repository's root, and
    Pants reloads them all when pants.toml changes (as adding a model's resolve does)."""
    return tuple(resolve for resolve, _ in _model_lockfiles(config))


def ml_model_addresses(config: str = "pants.toml") -> tuple[str, ...]:
    """Every model's `ml_model`, `models/<m>:<m>`, from the folders of their lockfiles: for
    targets that must name every model (the API fuzzer), so a new model needs no edit there."""
    return tuple(sorted({f"{os.path.dirname(lock)}:{os.path.basename(os.path.dirname(lock))}"
                         for _, lock in _model_lockfiles(config)}))
