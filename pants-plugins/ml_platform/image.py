"""The model's OCI image, built without a daemon, one cached Pants process per layer.

Layers, from least to most often changed: the base (Debian + Python from pinned .debs), the
model server (the same bytes for every model), the model's installed dependencies, the
model's code. A code change re-runs only the last layer's process and the (cheap) assembly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ml_platform.subsystem import MLPlatform
from pants.backend.python.util_rules.pex import Pex, PexProcess
from pants.backend.python.util_rules.pex_from_targets import PexFromTargetsRequest
from pants.engine.addresses import Addresses, UnparsedAddressInputs
from pants.engine.fs import (
    AddPrefix,
    Digest,
    DigestSubset,
    MergeDigests,
    PathGlobs,
    RemovePrefix,
)
from pants.engine.process import Process, ProcessResult
from pants.engine.rules import Get, MultiGet, collect_rules, rule
from pants.util.frozendict import FrozenDict
from pants.util.logging import LogLevel

IMAGE_LAYOUT = "image"
IMAGE_TAR = "image.tar"
_TOOL = "ml_image.model_image"


@dataclass(frozen=True)
class ImageTools:
    pex: Pex


@dataclass(frozen=True)
class ImageToolsRequest:
    pass


@rule(desc="Building the image tools")
async def image_tools(_: ImageToolsRequest, ml_platform: MLPlatform) -> ImageTools:
    addresses = await Get(
        Addresses,
        UnparsedAddressInputs(
            [ml_platform.image_tools], owning_address=None,
            description_of_origin="the option `[ml-platform].image_tools`",
        ),
    )
    pex = await Get(
        Pex,
        PexFromTargetsRequest(addresses, output_filename="ml_image.pex", internal_only=True),
    )
    return ImageTools(pex)


@dataclass(frozen=True)
class LayerRequest:
    """Run `model_image <command> <source> out` on `digest`; `source` is a path inside it."""

    command: str
    source: str
    digest: Digest
    description: str


@dataclass(frozen=True)
class BuiltLayer:
    """A directory digest holding layer.tar.gz and layer.json at its root."""

    digest: Digest


async def _run_tool(tools: ImageTools, argv: tuple[str, ...], digest: Digest, description: str,
                    output_directories: tuple[str, ...] = (), output_files: tuple[str, ...] = (),
                    **process_overrides) -> ProcessResult:
    process = await Get(
        Process,
        PexProcess(
            tools.pex,
            argv=argv,
            input_digest=digest,
            description=description,
            level=LogLevel.INFO,
            extra_env={"PEX_MODULE": _TOOL},
            output_directories=output_directories,
            output_files=output_files,
            timeout_seconds=1800,
        ),
    )
    if process_overrides:
        process = dataclasses.replace(process, **process_overrides)
    return await Get(ProcessResult, Process, process)


@rule(desc="Building an image layer")
async def build_layer(request: LayerRequest) -> BuiltLayer:
    tools = await Get(ImageTools, ImageToolsRequest())
    result = await _run_tool(
        tools, (request.command, request.source, "__layer"), request.digest, request.description,
        output_directories=("__layer",),
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
        append_only_caches=FrozenDict({"ml_platform_debs": ".cache/debs"}),
    )
    return BuiltLayer(await Get(Digest, RemovePrefix(result.output_digest, "__layer")))


@dataclass(frozen=True)
class ModelImageRequest:
    """Build the image of a packaged model: `package` holds <dir>/model.pex and server.pex."""

    package: Digest
    package_dir: str
    manifest_json: str
    env_json: str
    revision: str
    tag: str


@dataclass(frozen=True)
class ModelImage:
    digest: Digest  # <package_dir>/image/ (OCI layout) and <package_dir>/image.tar
    manifest_digest: str


@rule(desc="Building a model image")
async def build_model_image(request: ModelImageRequest, ml_platform: MLPlatform) -> ModelImage:
    d = request.package_dir
    deps_input, code_input, server_input = await MultiGet(
        Get(Digest, DigestSubset(request.package, PathGlobs([f"{d}/model.pex/.deps/**"]))),
        Get(Digest, DigestSubset(request.package, PathGlobs(
            [f"{d}/model.pex/**", f"!{d}/model.pex/.deps/**", f"!{d}/model.pex/.bootstrap/**"]))),
        Get(Digest, DigestSubset(request.package, PathGlobs([f"{d}/server.pex"]))),
    )
    base, server, deps, code = await MultiGet(
        Get(BuiltLayer, BaseLayerRequest(ml_platform.base_lock)),
        Get(BuiltLayer, LayerRequest("server-layer", f"{d}/server.pex", server_input,
                                     "Building the model server image layer")),
        Get(BuiltLayer, LayerRequest("deps-layer", f"{d}/model.pex", deps_input,
                                     f"Building the dependencies image layer of {d}")),
        Get(BuiltLayer, LayerRequest("code-layer", f"{d}/model.pex", code_input,
                                     f"Building the code image layer of {d}")),
    )
    layer_dirs = ("layers/0-base", "layers/1-server", "layers/2-deps", "layers/3-code")
    inputs = await MultiGet(
        Get(Digest, AddPrefix(layer.digest, prefix))
        for layer, prefix in zip((base, server, deps, code), layer_dirs)
    )
    tools = await Get(ImageTools, ImageToolsRequest())
    result = await _run_tool(
        tools,
        ("assemble", *(arg for layer_dir in layer_dirs for arg in ("--layer", layer_dir)),
         "--manifest", request.manifest_json, "--env", request.env_json,
         "--revision", request.revision, "--tag", request.tag,
         "--layout", f"{d}/{IMAGE_LAYOUT}", "--docker-tar", f"{d}/{IMAGE_TAR}"),
        await Get(Digest, MergeDigests(inputs)),
        f"Assembling the image {request.tag}",
        output_directories=(f"{d}/{IMAGE_LAYOUT}",),
        output_files=(f"{d}/{IMAGE_TAR}",),
    )
    return ModelImage(result.output_digest, result.stdout.decode().strip().splitlines()[-1])


def rules():
    return collect_rules()
