"""The model's OCI image, built without a daemon, one cached Pants process per layer.

Layers, from least to most often changed: the base (Debian + Python from pinned .debs), the
model's system packages (pinned .debs too, if it has any), the model server (the same bytes for every model), the model's installed dependencies, the
model's code. A code change re-runs only the last layer's process and the (cheap) assembly.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, Mapping

from ml_contract.aws_env import AWS_ENV, AWS_SECRET_ENV
from ml_contract.package_layout import (
    IMAGE_LAYOUT,
    MODEL_PEX,
    OCI_INDEX,
    OWN_LAYER_MIN_BYTES,
    PULLED_BASE_INFO,
)
from ml_platform.subsystem import MLPlatform
from pants.backend.python.util_rules.interpreter_constraints import InterpreterConstraints
from pants.backend.python.util_rules.pex import Pex, PexProcess
from pants.backend.python.util_rules.pex_from_targets import PexFromTargetsRequest
from pants.engine.addresses import Addresses, UnparsedAddressInputs
from pants.engine.env_vars import EnvironmentVars, EnvironmentVarsRequest
from pants.engine.fs import (
    EMPTY_DIGEST,
    AddPrefix,
    CreateDigest,
    Digest,
    DigestContents,
    DigestEntries,
    DigestSubset,
    FileContent,
    FileEntry,
    MergeDigests,
    PathGlobs,
    RemovePrefix,
)
from pants.engine.process import Process, ProcessCacheScope, ProcessResult
from pants.engine.rules import Get, MultiGet, collect_rules, rule
from pants.engine.target import InvalidFieldException
from pants.util.frozendict import FrozenDict
from pants.util.logging import LogLevel

# Registry credentials and AWS settings, passed through from the user's environment.
REGISTRY_ENV = ("ML_REGISTRY_USERNAME", "ML_REGISTRY_PASSWORD", *AWS_ENV, "SSL_CERT_FILE", "HOME")
# Of those, the secrets: no persistently cached process may have them in its environment.
SECRET_ENV = ("ML_REGISTRY_PASSWORD", *AWS_SECRET_ENV)
_TOOL = "ml_image.model_image"
_WHEEL_DIR = "__wheel"  # where a big dependency's wheel sits for its own layer's process


@dataclass(frozen=True)
class ToolPexRequest:
    """The PEX of one of the platform's tools: the `pex_binary` an `[ml-platform]` option names."""

    address: str
    option: str
    output_filename: str


@rule(desc="Building a platform tool", level=LogLevel.DEBUG)
async def tool_pex(request: ToolPexRequest) -> Pex:
    addresses = await Get(
        Addresses,
        UnparsedAddressInputs(
            [request.address], owning_address=None,
            description_of_origin=f"the option `[ml-platform].{request.option}`",
        ),
    )
    return await Get(
        Pex,
        PexFromTargetsRequest(addresses, output_filename=request.output_filename, internal_only=True),
    )


@dataclass(frozen=True)
class ImageTools:
    pex: Pex


@dataclass(frozen=True)
class ImageToolsRequest:
    pass


@rule(desc="Building the image tools")
async def image_tools(_: ImageToolsRequest, ml_platform: MLPlatform) -> ImageTools:
    return ImageTools(
        await Get(Pex, ToolPexRequest(ml_platform.image_tools, "image_tools", "ml_image.pex"))
    )


@dataclass(frozen=True)
class LayerRequest:
    """Run `model_image <command> <source> out` on `digest`; `source` is a path inside it."""

    command: str
    source: str
    digest: Digest
    description: str
    base_python: str


@dataclass(frozen=True)
class BuiltLayer:
    """A directory digest holding layer.tar.gz and layer.json at its root."""

    digest: Digest


def _mb(entry: FileEntry) -> str:
    """A wheel's size for a layer's description: Pants shows running processes with their
    elapsed time, so the size says which layers are the long ones."""
    return f"{entry.file_digest.serialized_bytes_length / 1e6:,.0f} MB"


def cache_scope_for(env: Mapping[str, str]) -> ProcessCacheScope:
    """How long a process that gets `env` may be cached: never beyond this run when it holds a
    secret, since the cache key of a persistently cached process holds its environment."""
    return ProcessCacheScope.PER_SESSION if any(env.get(k) for k in SECRET_ENV) else ProcessCacheScope.SUCCESSFUL


async def _run_tool(tools: ImageTools, argv: tuple[str, ...], digest: Digest, description: str,
                    output_directories: tuple[str, ...] = (), output_files: tuple[str, ...] = (),
                    extra_env: FrozenDict[str, str] = FrozenDict(),
                    extra_caches: FrozenDict[str, str] = FrozenDict(),
                    cache_scope: ProcessCacheScope = ProcessCacheScope.SUCCESSFUL) -> ProcessResult:
    process = await Get(
        Process,
        PexProcess(
            tools.pex,
            argv=argv,
            input_digest=digest,
            description=description,
            level=LogLevel.INFO,
            extra_env={**extra_env, "PEX_MODULE": _TOOL},
            output_directories=output_directories,
            output_files=output_files,
            timeout_seconds=1800,
        ),
    )
    # Added to PexProcess' own caches (Pants' pex_root), never instead of them.
    process = dataclasses.replace(
        process, append_only_caches=FrozenDict({**process.append_only_caches, **extra_caches}),
        cache_scope=cache_scope,
    )
    return await Get(ProcessResult, Process, process)


async def _read_json(digest: Digest, path: str) -> Any:
    """One small JSON file of a (possibly large) digest: a result a tool left for the plugin."""
    subset = await Get(Digest, DigestSubset(digest, PathGlobs([path])))
    (content,) = await Get(DigestContents, Digest, subset)
    return json.loads(content.content)


@rule(desc="Building an image layer")
async def build_layer(request: LayerRequest) -> BuiltLayer:
    tools = await Get(ImageTools, ImageToolsRequest())
    result = await _run_tool(
        tools, (request.command, request.source, "__layer", "--base-python", request.base_python),
        request.digest, request.description, output_directories=("__layer",),
    )
    return BuiltLayer(await Get(Digest, RemovePrefix(result.output_digest, "__layer")))


@dataclass(frozen=True)
class BaseLayerRequest:
    lock_path: str


@rule(desc="Building the embedded base image layer")
async def build_base_layer(request: BaseLayerRequest) -> BuiltLayer:
    tools = await Get(ImageTools, ImageToolsRequest())
    lock = await Get(Digest, PathGlobs([request.lock_path]))
    result = await _run_tool(
        tools,
        ("base-layer", request.lock_path, "__layer", "--cache", ".cache/debs"),
        lock,
        "Building the base image layer from pinned Debian packages",
        output_directories=("__layer",),
        # Downloaded .debs are verified by sha256 and kept across builds.
        extra_caches=FrozenDict({"ml_platform_debs": ".cache/debs"}),
    )
    return BuiltLayer(await Get(Digest, RemovePrefix(result.output_digest, "__layer")))


@dataclass(frozen=True)
class SystemPackagesLayerRequest:
    """The layer of a model's system packages; `packages_json` is its lock's package list alone
    (ml_contract.system_packages.layer_input), so models with the same packages run one
    process and share one layer."""

    packages_json: str


@rule(desc="Building a system packages image layer")
async def build_system_packages_layer(request: SystemPackagesLayerRequest) -> BuiltLayer:
    tools = await Get(ImageTools, ImageToolsRequest())
    packages = json.loads(request.packages_json)["packages"]
    size = sum(p["size"] for p in packages)
    digest = await Get(Digest, CreateDigest([FileContent("__system/packages.json", request.packages_json.encode())]))
    result = await _run_tool(
        tools,
        ("system-layer", "__system/packages.json", "__layer", "--cache", ".cache/debs"),
        digest,
        f"Building the system packages image layer ({len(packages)} Debian packages, {size / 1e6:,.0f} MB)",
        output_directories=("__layer",),
        extra_caches=FrozenDict({"ml_platform_debs": ".cache/debs"}),  # shared with the base's
    )
    return BuiltLayer(await Get(Digest, RemovePrefix(result.output_digest, "__layer")))


@dataclass(frozen=True)
class BaseImageRequest:
    """`embedded`, or a registry reference pinned by digest, for a model whose interpreter
    constraints (strings such as `CPython==3.11.*`) its Python must satisfy."""

    base_image: str
    interpreter_constraints: tuple[str, ...]
    model_address: str

    def check_python(self, version: str) -> None:
        # Each parsed constraint is a requirement on the interpreter: `"3.11.2" in it` tests it.
        if not any(version in c for c in InterpreterConstraints(self.interpreter_constraints)):
            raise InvalidFieldException(
                f"The base image of {self.model_address} ({self.base_image}) has Python {version}, "
                f"which does not satisfy the model's interpreter constraints "
                f"{' or '.join(self.interpreter_constraints)}. Change the model's `base_image` "
                "(or `[ml-platform].base_image`) or its `interpreter_constraints`."
            )


@dataclass(frozen=True)
class BaseImage:
    digest: Digest  # layer directories (and base.json for a pulled base) at its root
    python_version: str
    python_path: str
    pulled: bool


@rule(desc="Preparing the base image")
async def base_image(request: BaseImageRequest, ml_platform: MLPlatform) -> BaseImage:
    if request.base_image == "embedded":
        lock = await Get(DigestContents, PathGlobs([ml_platform.base_lock]))
        if not lock:
            raise ValueError(f"The base image lock file {ml_platform.base_lock} does not exist "
                             "(option `[ml-platform].base_lock`).")
        version = json.loads(lock[0].content)["python_version"]
        request.check_python(version)  # before downloading anything
        layer = await Get(BuiltLayer, BaseLayerRequest(ml_platform.base_lock))
        return BaseImage(await Get(Digest, AddPrefix(layer.digest, "00")), version,
                         "/usr/bin/python3.11", pulled=False)
    tools = await Get(ImageTools, ImageToolsRequest())
    env = await Get(EnvironmentVars, EnvironmentVarsRequest(REGISTRY_ENV))
    result = await _run_tool(
        tools, ("base-from-registry", request.base_image, "__base", "--cache", ".cache/blobs"),
        EMPTY_DIGEST, f"Pulling the base image {request.base_image}",
        output_directories=("__base",),
        extra_env=FrozenDict(env),
        extra_caches=FrozenDict({"ml_platform_blobs": ".cache/blobs"}),
        # A process' environment is part of its cache key: with a secret in it, the pull is
        # remembered for this run only and never written to a cache. The base is pinned by
        # digest and its blobs are cached, so a later run repeats only the manifest request.
        cache_scope=cache_scope_for(env),
    )
    base_dir = await Get(Digest, RemovePrefix(result.output_digest, "__base"))
    base = await _read_json(base_dir, PULLED_BASE_INFO)
    if not base["python_path"]:
        raise ValueError(f"The base image {request.base_image} has no python3.11 in /usr/bin or "
                         "/usr/local/bin: model images need one.")
    if not base["python_version"]:
        raise ValueError(f"Cannot tell which Python the base image {request.base_image} has: give "
                         "it a PYTHON_VERSION environment variable or an "
                         "`ml-platform.python.version` label.")
    request.check_python(base["python_version"])
    return BaseImage(base_dir,
                     base["python_version"], base["python_path"], pulled=True)


@dataclass(frozen=True)
class ModelImageRequest:
    """Build the image of a packaged model: `package` holds <dir>/model.pex and server.pex."""

    package: Digest
    package_dir: str
    generated_files: tuple[str, ...]  # inside model.pex/: a layer of their own, before the code
    manifest_json: str
    env_json: str
    revision: str
    tag: str
    base: BaseImage
    system_packages: str = ""  # SystemPackagesLayerRequest.packages_json, or "" for none


@dataclass(frozen=True)
class ModelImage:
    digest: Digest  # <package_dir>/image/ (an OCI layout: the only copy of the image)
    manifest_digest: str


@rule(desc="Building a model image")
async def build_model_image(request: ModelImageRequest, ml_platform: MLPlatform) -> ModelImage:
    d = request.package_dir
    deps_dir = f"{d}/{MODEL_PEX}/.deps"
    entries = await Get(DigestEntries, DigestSubset(request.package, PathGlobs([f"{deps_dir}/*"])))
    # Each big dependency is built on its own, from the wheel alone at a fixed path: two models
    # that lock the same wheel run the same (cached) process and get the same layer.
    big = sorted((e for e in entries if isinstance(e, FileEntry) and e.file_digest.serialized_bytes_length
                  >= OWN_LAYER_MIN_BYTES), key=lambda e: e.path)
    big_names = [PurePath(e.path).name for e in big]
    big_wheels = await MultiGet(
        Get(Digest, CreateDigest([dataclasses.replace(e, path=f"{_WHEEL_DIR}/{name}")]))
        for e, name in zip(big, big_names)
    )
    generated = [f"{d}/{MODEL_PEX}/{path}" for path in request.generated_files]
    deps_input, generated_input, code_input, server_input = await MultiGet(
        Get(Digest, DigestSubset(request.package, PathGlobs(
            [f"{deps_dir}/**", *(f"!{e.path}" for e in big)]))),
        Get(Digest, DigestSubset(request.package, PathGlobs(generated))),
        Get(Digest, DigestSubset(request.package, PathGlobs(
            [f"{d}/{MODEL_PEX}/**", f"!{d}/{MODEL_PEX}/.deps/**", f"!{d}/{MODEL_PEX}/.bootstrap/**",
             *(f"!{path}" for path in generated)]))),
        Get(Digest, DigestSubset(request.package, PathGlobs([f"{d}/server.pex"]))),
    )
    python = request.base.python_path
    # In image order, after the base: the system packages, the server, the big dependencies (by
    # wheel name), the rest, the generated artifacts, the code.
    layers = {
        "1-server": LayerRequest("server-layer", f"{d}/server.pex", server_input,
                                 "Building the model server image layer", python),
        **{f"2-wheel-{i:03d}": LayerRequest("wheel-layer", f"{_WHEEL_DIR}/{name}", wheel,
                                            f"Building the image layer of {name} ({_mb(entry)})", python)
           for i, (entry, name, wheel) in enumerate(zip(big, big_names, big_wheels))},
        "3-deps": LayerRequest("deps-layer", f"{d}/{MODEL_PEX}", deps_input,
                               f"Building the dependencies image layer of {d}", python),
        # Laid out like code (at the model's source root), but built only when the script's
        # output changes: a code change neither rebuilds nor re-pushes it.
        **({"4-generated": LayerRequest("code-layer", f"{d}/{MODEL_PEX}", generated_input,
                                        f"Building the generated artifacts image layer of {d}", python)}
           if generated else {}),
        "5-code": LayerRequest("code-layer", f"{d}/{MODEL_PEX}", code_input,
                               f"Building the code image layer of {d}", python),
    }
    gets = [Get(BuiltLayer, LayerRequest, layer) for layer in layers.values()]
    names = list(layers)
    if request.system_packages:
        gets.insert(0, Get(BuiltLayer, SystemPackagesLayerRequest(request.system_packages)))
        names.insert(0, "0-system")
    built = await MultiGet(gets)
    layer_dirs = tuple(f"layers/{name}" for name in names)
    inputs = await MultiGet(
        Get(Digest, AddPrefix(layer.digest, prefix)) for layer, prefix in zip(built, layer_dirs)
    )
    base_digest = await Get(Digest, AddPrefix(request.base.digest, "layers/base"))
    # A pulled base brings its own layers and environment; the embedded one is one layer.
    base_args = (("--base", "layers/base") if request.base.pulled
                 else ("--layer", "layers/base/00"))
    tools = await Get(ImageTools, ImageToolsRequest())
    result = await _run_tool(
        tools,
        ("assemble", *base_args,
         *(arg for layer_dir in layer_dirs for arg in ("--layer", layer_dir)),
         "--manifest", request.manifest_json, "--env", request.env_json,
         "--revision", request.revision, "--tag", request.tag,
         "--layout", f"{d}/{IMAGE_LAYOUT}"),
        await Get(Digest, MergeDigests([base_digest, *inputs])),
        f"Assembling the image {request.tag}",
        output_directories=(f"{d}/{IMAGE_LAYOUT}",),
    )
    index = await _read_json(result.output_digest, f"{d}/{IMAGE_LAYOUT}/{OCI_INDEX}")
    return ModelImage(result.output_digest, index["manifests"][0]["digest"])


def rules():
    return collect_rules()
