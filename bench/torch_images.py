#!/usr/bin/env python3
"""Image figures for the PyTorch-family models (doc_links and mask2former on the CPU torch build,
mask_rcnn on the CUDA build), measured side by side in one run, in a scratch clone of the current
commit with its own empty Pants caches and its own pantsd (stopped at the end):

  1. build     cold `./pants package` of each model in turn (so the later ones reuse what the
               earlier ones built, as a team's second torch model would), then every model again
               with `--no-local-cache` (every process re-run: a second clean build) and the
               manifest digests of the two builds compared
  2. size      each image against the same lock `pip install`ed onto the same base (the naive
               image of bench/image.py), and its layers
  3. push      into an empty local docker-registry in order, doc_links, mask2former, mask_rcnn:
               the bytes each push uploads as a share of its image; then a one-line change to
               mask_rcnn's code, its rebuild time and what its push uploads
  4. start     `podman run -d` until GET /v2/health/ready answers 200 (median of N), on this
               CPU-only host (mask_rcnn then serves on the CPU)

Needs podman + runc, docker-registry, git and python3.11. Standard library only.

Usage: ./pants run bench/torch_images.py -- [--starts N] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from image import (
    MB,
    Clone,
    blob,
    gunzipped_size,
    image_bytes,
    log,
    manifest_digest,
    manifest_of,
    naive_layer,
    require_tools,
    run,
    section,
    start_once,
    LOADAVG,
)
from ml_image.registry import push_layout
from testutil.podman import load_layout, podman_store
from testutil.registry import start_registry

MODELS = ("doc_links", "mask2former", "mask_rcnn")
TAG = "v1"
START_TIMEOUT = 300


def package(clone: Clone, *args: str) -> float:
    argv = ["bash", "pants", "--no-dynamic-ui", *args]
    start = time.perf_counter()
    result = subprocess.run(argv, cwd=clone.path, env=clone.env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"`{' '.join(argv)}` failed in {clone.path}:\n{result.stderr[-4000:]}")
    return time.perf_counter() - start


def layer_rows(layout: Path) -> list[tuple[int, int]]:
    """(gzip, tar) bytes of each layer."""
    return [(l["size"], gunzipped_size(blob(layout, l["digest"]))) for l in manifest_of(layout)["layers"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=3, help="Container starts per model (median).")
    parser.add_argument("--keep", action="store_true", help="Keep the scratch directory.")
    parser.add_argument("--warm", action="store_true",
                        help="Build with this machine's Pants caches (no cold build, no clean rebuild: "
                             "section 1 then reports the warm package time only).")
    args = parser.parse_args()
    require_tools()
    scratch = Path(tempfile.mkdtemp(prefix="ml-torch-bench-"))
    log(f"scratch directory {scratch}")
    clone = Clone(scratch, "a")
    if args.warm:
        clone.env = dict(os.environ)
    commit = run(["git", "rev-parse", "HEAD"], cwd=clone.path).stdout.strip()
    out = [f"PyTorch-family image benchmark of commit {commit[:12]} ({os.cpu_count()} cores)", ""]
    try:
        # 1. Cold, one model after another; then a second clean build of all three.
        cold: dict[str, float] = {}
        for model in MODELS:
            section(f"1. {'warm' if args.warm else 'cold'} package of {model}")
            cold[model] = package(clone, "package", f"models/{model}:")
            log(f"{model}: {cold[model]:.1f} s")
        first = {m: manifest_digest(clone.package_dir(m) / "image") for m in MODELS}
        clean, second = float("nan"), dict(first)
        if not args.warm:
            section("1. clean rebuild (--no-local-cache)")
            clean = package(clone, "--no-local-cache", "package", *(f"models/{m}:" for m in MODELS))
            second = {m: manifest_digest(clone.package_dir(m) / "image") for m in MODELS}

        # 2. Sizes against the naive pip-installed image.
        section("2. sizes")
        sizes, layers = {}, {}
        for model in MODELS:
            layout = clone.package_dir(model) / "image"
            layers[model] = layer_rows(layout)
            log(f"naive image of {model}: pip install ...")
            naive_gz, naive_tar, _ = naive_layer(clone.package_dir(model), clone.path, model,
                                                 scratch / f"naive-{model}")
            base_gz, base_tar = layers[model][0]
            sizes[model] = (sum(g for g, _ in layers[model]), sum(t for _, t in layers[model]),
                            base_gz + naive_gz, base_tar + naive_tar)

        # 3. Pushes in order into one registry, then a one-line change to mask_rcnn.
        section("3. pushes")
        pushed: dict[str, tuple[int, int]] = {}
        with start_registry(scratch / "registry", auth="none") as registry:
            for model in MODELS:
                layout = clone.package_dir(model) / "image"
                result = push_layout(layout, f"127.0.0.1:{registry.port}/ml/{model}:{TAG}", quiet=True)
                pushed[model] = (result.uploaded_bytes + result.manifest_size, image_bytes(layout))
            clone.edit("mask_rcnn", "# bench: a one-line change")
            section("3. package after a one-line change to mask_rcnn")
            edit_seconds = package(clone, "package", "models/mask_rcnn:")
            layout = clone.package_dir("mask_rcnn") / "image"
            result = push_layout(layout, f"127.0.0.1:{registry.port}/ml/mask_rcnn:{TAG}", quiet=True)
            edit_pushed = (result.uploaded_bytes + result.manifest_size, image_bytes(layout))
            edit_blobs = [b.size for b in result.blobs if b.action == "uploaded"]
        clone.stop_pantsd()

        # 4. Start to ready.
        section("4. container starts")
        ready: dict[str, list[float]] = {m: [] for m in MODELS}
        loaded: dict[str, float] = {}
        with podman_store() as podman:
            # One image at a time: each is gigabytes unpacked.
            for model in MODELS:
                start = time.monotonic()
                load_layout(podman, clone.package_dir(model) / "image")
                loaded[model] = time.monotonic() - start
                for i in range(args.starts):
                    log(f"starts of {model}: {i + 1}/{args.starts}")
                    ready[model].append(start_once(podman, f"localhost/ml/{model}:{TAG}", None,
                                                   timeout=START_TIMEOUT)["ready"])
                podman("rmi", "--force", f"localhost/ml/{model}:{TAG}", check=False)
    finally:
        clone.stop_pantsd()
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)

    kind = "warm (this machine's caches)" if args.warm else "cold"
    out += [f"## 1. Build: `./pants package models/<m>:`, {kind}, one model after another", "",
            f"| model | {kind} s (after the models above it) |", "| --- | ---: |",
            *(f"| {m} | {cold[m]:.1f} |" for m in MODELS),
            ""]
    if not args.warm:
        out += [f"All three again with `--no-local-cache` (every process re-run): {clean:.1f} s. "
                "Manifest digests of the two builds:", "",
                "| model | first build | clean rebuild | equal |", "| --- | --- | --- | --- |",
                *(f"| {m} | {first[m]} | {second[m]} | {'yes' if first[m] == second[m] else '**NO**'} |"
                  for m in MODELS), ""]
    out += ["## 2. Size: ours vs the same lock `pip install`ed onto the same base", "",
            "| model | layers | ours gzip MB | naive gzip MB | ours / naive | ours tar MB | naive tar MB | largest layer gzip MB |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for m in MODELS:
        ours_gz, ours_tar, naive_gz, naive_tar = sizes[m]
        out.append(f"| {m} | {len(layers[m])} | {ours_gz / MB:.1f} | {naive_gz / MB:.1f} | **{ours_gz / naive_gz:.3f}** "
                   f"| {ours_tar / MB:.1f} | {naive_tar / MB:.1f} | {max(g for g, _ in layers[m]) / MB:.1f} |")
    out += ["", "Layer sizes, gzip MB, in image order:", "",
            *(f"- {m}: " + " ".join(f"{g / MB:.1f}" for g, _ in layers[m]) for m in MODELS), ""]
    out += ["## 3. Pushes into one registry, in order", "",
            "| push | uploaded + manifest MB | image MB | share |", "| --- | ---: | ---: | ---: |",
            *(f"| {m} | {pushed[m][0] / MB:.1f} | {pushed[m][1] / MB:.1f} | **{pushed[m][0] / pushed[m][1]:.2%}** |"
              for m in MODELS),
            f"| mask_rcnn after a one-line code change | {edit_pushed[0] / MB:.3f} | {edit_pushed[1] / MB:.1f} "
            f"| **{edit_pushed[0] / edit_pushed[1]:.3%}** |",
            "", f"The one-line change: `package` took {edit_seconds:.1f} s (cold {cold['mask_rcnn']:.1f} s); "
            f"blobs uploaded: {', '.join(f'{s:,} B' for s in edit_blobs)}.", ""]
    out += [f"## 4. Container start to ready (median of {args.starts}; this host has no GPU)", "",
            "| model | ready s | min-max s | `podman load` s |", "| --- | ---: | ---: | ---: |",
            *(f"| {m} | **{statistics.median(ready[m]):.2f}** | {min(ready[m]):.2f}-{max(ready[m]):.2f} | {loaded[m]:.1f} |"
              for m in MODELS), ""]
    out += ["Load average (1 min, the whole machine) as each step started: "
            + ", ".join(f"{name} {load:.2f}" for name, load in LOADAVG)]
    print("\n".join(out))


if __name__ == "__main__":
    main()
