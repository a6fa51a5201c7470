#!/usr/bin/env python3
"""Image figures for the model images `./pants package` builds, measured side by side in one run.

Everything is built from the current commit in two scratch clones, each with its own empty Pants
caches and its own pantsd (stopped at the end), so the working tree is never touched:

  1. size      our image (4 layers) against a naive one of the same lockfile: our base layer plus
               one layer that `pip install --no-deps --only-binary :all: --target` (pins from the
               model's lockfile and the server's) plus the model's and server's code would give,
               with the __pycache__ pip writes; compressed (gzip blobs) and uncompressed (tars)
  2. start     `podman run -d` until GET /v2/health/ready answers 200 (median of N starts,
               interleaved), with 2 workers (the default on 2 cores) and with ML_WORKERS=1; the
               first worker's `worker_ready` log line; and where the time goes (container and
               interpreter start, the model's imports under -X importtime)
  3. push      a local Debian docker-registry: the full image, then the image after a one-line
               change to the model's code; bytes uploaded (blobs + manifest) as a share of the image
  4. build     `./pants package models/iris: models/digits:` cold (empty caches), then after a
               one-line change to iris (and to digits); manifest digests of two cold builds of the
               same commit in two clones with separate empty caches must be equal

Needs podman + runc, docker-registry, git and python3.11 (for pip); downloads wheels from PyPI
and .debs from the Debian mirror (cold builds, the naive image). Standard library only.

Usage: python3 bench/image.py [--starts N] [--keep]
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Optional

from ml_image.layers import tree_entries, write_layer
from ml_image.model_image import MODEL_ROOT, SERVER_ROOT, venv_entries
from ml_image.engine import wait_for_200
from ml_image.registry import push_layout
from testutil.net import free_port
from testutil.podman import Podman, load_layout, podman_store
from testutil.registry import RunningRegistry, start_registry
from testutil.scratch import clone as scratch_clone, own_caches, repo_root, stop_pantsd

REPO = repo_root()

MODELS = ("iris", "digits")
TARGETS = [f"models/{m}:" for m in MODELS]
TAG = "v1"
NAIVE_ROOT = "/opt/venv"
NAIVE_SITE = f"{NAIVE_ROOT}/lib/python3.11/site-packages"
# PEX metadata and bootstrap files: what `COPY . .` of the sources would not bring either.
PEX_INTERNALS = {".bootstrap", ".deps", "PEX-INFO", "__main__.py", "__pex__", ".layout.json"}
MB = 1_000_000
_T0 = time.monotonic()


LOADAVG: list[tuple[str, float]] = []


def log(message: str) -> None:
    print(f"[{time.monotonic() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


def section(name: str) -> None:
    """Note the machine's load (other users' work included) as a section starts."""
    LOADAVG.append((name, os.getloadavg()[0]))
    log(f"{name} (load average {LOADAVG[-1][1]:.2f}) ...")


def require_tools() -> None:
    """What the image benches run: podman (with runc), a registry and git."""
    for tool in ("podman", "runc", "docker-registry", "git"):
        if shutil.which(tool) is None:
            sys.exit(f"`{tool}` is not installed (apt-get install podman runc docker-registry git)")


def run(argv: list, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        sys.exit(f"`{' '.join(map(str, argv))}` failed ({result.returncode}):\n"
                 f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return result




# ---------------------------------------------------------------------------------------------
# Scratch clones with their own caches


class Clone:
    def __init__(self, scratch: Path, name: str) -> None:
        self.root = scratch / name
        self.path = self.root / "repo"
        self.root.mkdir()
        scratch_clone(self.path)
        # Empty caches of this clone's own: its first build downloads and builds everything.
        self.env = own_caches(self.root)

    def package(self, targets: list[str] = TARGETS) -> float:
        argv = ["bash", "pants", "--no-dynamic-ui", "package", *targets]
        start = time.perf_counter()
        result = subprocess.run(argv, cwd=self.path, env=self.env, capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        if result.returncode != 0:
            sys.exit(f"`{' '.join(argv)}` failed in {self.path}:\n{result.stderr[-4000:]}")
        return elapsed

    def package_dir(self, model: str) -> Path:
        return self.path / "dist" / f"models.{model}" / model

    def edit(self, model: str, line: str) -> None:
        with (self.path / "models" / model / "src" / "model.py").open("a") as f:
            f.write(f"{line}\n")

    def stop_pantsd(self) -> None:
        stop_pantsd(self.path)


# ---------------------------------------------------------------------------------------------
# Layouts


def manifest_digest(layout: Path) -> str:
    (entry,) = json.loads((layout / "index.json").read_text())["manifests"]
    return entry["digest"]


def blob(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.split(":", 1)[1]


def manifest_of(layout: Path) -> dict:
    return json.loads(blob(layout, manifest_digest(layout)).read_bytes())


def gunzipped_size(path: Path) -> int:
    size = 0
    with gzip.open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            size += len(chunk)
    return size


def image_bytes(layout: Path) -> int:
    """What a push of the whole image sends: config, layers and the manifest."""
    manifest = manifest_of(layout)
    return (manifest["config"]["size"] + sum(l["size"] for l in manifest["layers"])
            + blob(layout, manifest_digest(layout)).stat().st_size)


# ---------------------------------------------------------------------------------------------
# 1. Size against a naive image


def lock_pins(lock: Path) -> dict[str, str]:
    text = "".join(line for line in lock.read_text().splitlines(True) if not line.lstrip().startswith("//"))
    (resolve,) = json.loads(text)["locked_resolves"]
    return {r["project_name"]: r["version"] for r in resolve["locked_requirements"]}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def python311() -> str:
    if sys.version_info[:2] == (3, 11):
        return sys.executable
    found = shutil.which("python3.11")
    if not found:
        sys.exit("python3.11 is needed to pip install the naive image's site-packages")
    return found


def naive_layer(package: Path, clone: Path, model: str, work: Path) -> tuple[int, int, list[str]]:
    """The one layer `RUN pip install -r requirements.txt` + `COPY` of the code would add on the
    base: (gzip bytes, tar bytes, pins installed)."""
    site = work / "site-packages"
    site.mkdir(parents=True)
    pins = lock_pins(clone / "models" / model / f"{model}.lock")
    serving = {normalize(k): (k, v) for k, v in lock_pins(clone / "platform" / "serving.lock").items()}
    with zipfile.ZipFile(package / "server.pex") as zf:
        server_code = [n for n in zf.namelist() if n.split("/")[0] not in PEX_INTERNALS and not n.endswith("/")]
        # .deps/<name>-<version>-<tags>.whl/...: the server's own third-party distributions.
        server_dists = sorted({n.split("/")[1].split("-")[0] for n in zf.namelist()
                               if n.startswith(".deps/") and n.count("/") > 1})
        for name in server_dists:
            project, version = serving[normalize(name)]
            pins[project] = version
        zf.extractall(site, members=server_code)
    requirements = [f"{name}=={version}" for name, version in sorted(pins.items())]
    run([python311(), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input",
         "--no-deps", "--only-binary", ":all:", "--cache-dir", work / "pip-cache", "--target", site,
         *requirements])
    model_pex = package / "model.pex"
    for item in sorted(model_pex.iterdir()):
        if item.name in PEX_INTERNALS:
            continue
        if item.is_dir():
            shutil.copytree(item, site / item.name, dirs_exist_ok=True)
        else:
            shutil.copy2(item, site / item.name)
    info = write_layer([*venv_entries(NAIVE_ROOT), *tree_entries(site, NAIVE_SITE)], work / "layer.tar.gz")
    size, tar_size = info.size, gunzipped_size(work / "layer.tar.gz")
    shutil.rmtree(site)
    (work / "layer.tar.gz").unlink()
    shutil.rmtree(work / "pip-cache", ignore_errors=True)
    return size, tar_size, requirements


def size_section(clone: Clone, work: Path) -> tuple[list[str], dict[str, float]]:
    lines = ["## 1. Image size: ours vs a naive `pip install` image on the same base", "",
             "| model | image | layers | compressed MB | uncompressed MB | above the base: compressed MB "
             "| above the base: uncompressed MB |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    ratios: dict[str, float] = {}
    notes = []
    for model in MODELS:
        layout = clone.package_dir(model) / "image"
        layers = manifest_of(layout)["layers"]
        compressed = [l["size"] for l in layers]
        uncompressed = [gunzipped_size(blob(layout, l["digest"])) for l in layers]
        log(f"naive image of {model}: pip install ...")
        n_gz, n_tar, pins = naive_layer(clone.package_dir(model), clone.path, model, work / f"naive-{model}")
        naive_c, naive_u = compressed[0] + n_gz, uncompressed[0] + n_tar
        ratios[model] = sum(compressed) / naive_c
        lines.append(f"| {model} | ours (base, server, deps, code) | {len(layers)} | {sum(compressed) / MB:.1f} "
                     f"| {sum(uncompressed) / MB:.1f} | {sum(compressed[1:]) / MB:.1f} "
                     f"| {sum(uncompressed[1:]) / MB:.1f} |")
        lines.append(f"| {model} | naive (base, pip site-packages + code) | 2 | {naive_c / MB:.1f} | "
                     f"{naive_u / MB:.1f} | {n_gz / MB:.1f} | {n_tar / MB:.1f} |")
        lines.append(f"| {model} | **ours / naive** | | **{sum(compressed) / naive_c:.3f}** | "
                     f"**{sum(uncompressed) / naive_u:.3f}** | {sum(compressed[1:]) / n_gz:.3f} | "
                     f"{sum(uncompressed[1:]) / n_tar:.3f} |")
        notes.append(f"- {model}: base layer {compressed[0] / MB:.1f} MB compressed, {uncompressed[0] / MB:.1f} MB "
                     f"uncompressed; our layers above it: "
                     + ", ".join(f"{name} {c / MB:.2f}/{u / MB:.2f} MB" for name, c, u in
                                 zip(("server", "deps", "code"), compressed[1:], uncompressed[1:]))
                     + f" (gz/tar); naive pins: {' '.join(pins)}")
    return lines + ["", *notes], ratios


# ---------------------------------------------------------------------------------------------
# 2. Container start to ready


_TS_RE = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)\s+(\{\"event\": \"worker_ready\".*?\})")


def _parse_ts(base: str, frac: Optional[str], tz: str) -> float:
    text = base + ("." + (frac or "0")[:6].ljust(6, "0")) + ("+00:00" if tz == "Z" else tz)
    return dt.datetime.fromisoformat(text).timestamp()


def remove_container(podman: Podman, container: str) -> None:
    """Retried, then fatal: a container left running would share the cores with the next starts."""
    for _ in range(5):
        if podman("rm", "--force", "--time", "0", container, check=False).returncode == 0:
            return
        time.sleep(0.5)
    sys.exit(f"podman could not remove container {container}")


def start_once(podman: Podman, image: str, workers: Optional[int], timeout: float = 120) -> dict[str, float]:
    port = free_port()
    env = ["-e", f"ML_PORT={port}", "-e", "ML_HOST=127.0.0.1"]
    if workers:
        env += ["-e", f"ML_WORKERS={workers}"]
    wall0, start = time.time(), time.monotonic()
    container = podman("run", "-d", *env, image).stdout.strip()
    returned = time.monotonic() - start
    try:
        if not wait_for_200(f"http://127.0.0.1:{port}/v2/health/ready", timeout, interval=0.005):
            sys.exit(f"{image} not ready after {timeout:g} s:\n{podman('logs', container, check=False).stderr}")
        ready = time.monotonic() - start
        logs = podman("logs", "-t", container, check=False)
    finally:
        remove_container(podman, container)
    worker_ready = []
    for m in _TS_RE.finditer(logs.stdout + logs.stderr):
        at = _parse_ts(m.group(1), m.group(2), m.group(3)) - wall0
        worker_ready.append((at, json.loads(m.group(4))["load_seconds"]))
    first = min(worker_ready) if worker_ready else (float("nan"), float("nan"))
    return {"run_returned": returned, "ready": ready, "first_worker_ready": first[0],
            "first_worker_load": first[1], "worker_spawned": first[0] - first[1]}


_PROFILE = r"""
import json, sys, time
t0 = time.perf_counter()
import model
t1 = time.perf_counter()
from ml_runtime.handler import LoadedModel
LoadedModel("model:Model")
t2 = time.perf_counter()
print("BENCH " + json.dumps({"import_model": t1 - t0, "load_and_describe": t2 - t1}), file=sys.stderr)
"""
_SERVER_IMPORT = ("import time; t = time.perf_counter(); import ml_serving.main; "
                  "print(time.perf_counter() - t)")


def profile(podman: Podman, image: str) -> dict:
    """Container + interpreter start (`python -c pass`, median of 3, podman run --rm wall time),
    the server's import (median of 3), and the model's import and load() under -X importtime
    (the second of two runs), each in a container of its own, one process at a time."""
    py = f"{MODEL_ROOT}/bin/python3"
    walls, server = [], []
    for _ in range(3):
        start = time.monotonic()
        podman("run", "--rm", "--entrypoint", py, image, "-c", "pass")
        walls.append(time.monotonic() - start)
        server.append(float(podman("run", "--rm", "--entrypoint", f"{SERVER_ROOT}/bin/python3", image,
                                   "-c", _SERVER_IMPORT).stdout.strip()))
    for _ in range(2):
        out = podman("run", "--rm", "--entrypoint", py, image, "-X", "importtime", "-c", _PROFILE).stderr
    figures: dict = {"container_python_pass": statistics.median(walls), "server_import": statistics.median(server)}
    imports = []
    for line in out.splitlines():
        if line.startswith("BENCH "):
            figures.update(json.loads(line[6:]))
        elif line.startswith("import time:") and "self [us]" not in line:
            self_us, cumulative, name = line[len("import time:"):].split("|", 2)
            imports.append((int(self_us), int(cumulative), name.rstrip()))
    figures["imports"] = imports
    figures["self_total"] = sum(i[0] for i in imports) / 1e6
    figures["self_stdlib"] = sum(i[0] for i in imports
                                 if i[2].strip().split(".")[0] in sys.stdlib_module_names) / 1e6
    return figures


def start_section(clone: Clone, starts: int) -> tuple[list[str], dict]:
    with podman_store() as podman:
        images = {}
        load_seconds = {}
        for model in MODELS:
            start = time.monotonic()
            load_layout(podman, clone.package_dir(model) / "image")
            load_seconds[model] = time.monotonic() - start
            images[model] = f"localhost/ml/{model}:{TAG}"
        cases = [(model, workers) for model in MODELS for workers in (None, 1)]
        first = {case: start_once(podman, images[case[0]], case[1]) for case in cases}  # after the load
        samples: dict = {case: [] for case in cases}
        for i in range(starts):  # interleaved rounds, so drift in the machine's load hits every case
            log(f"starts: round {i + 1}/{starts}")
            for case in cases:
                samples[case].append(start_once(podman, images[case[0]], case[1]))
        profiles = {}
        for model in MODELS:
            log(f"profiling the start of {images[model]}")
            profiles[model] = profile(podman, images[model])

    def med(case, key: str) -> float:
        return statistics.median(s[key] for s in samples[case])

    lines = [f"## 2. Container start to ready (`podman run -d` until /v2/health/ready is 200; median of {starts})",
             "",
             "| model | workers | ready s | min–max s | first start after `podman load` s "
             "| `podman run -d` returned s | first worker started s | its load s | first `worker_ready` s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for case in cases:
        model, workers = case
        ready = [s["ready"] for s in samples[case]]
        lines.append(f"| {model} | {workers or '2 (default)'} | **{med(case, 'ready'):.2f}** | "
                     f"{min(ready):.2f}–{max(ready):.2f} | {first[case]['ready']:.2f} | "
                     f"{med(case, 'run_returned'):.2f} | {med(case, 'worker_spawned'):.2f} | "
                     f"{med(case, 'first_worker_load'):.2f} | {med(case, 'first_worker_ready'):.2f} |")
    lines += ["", "Readiness is the first worker's `worker_ready`; the server starts the second worker only "
              "then, so with 2 workers the first loads alone as with 1. \"First worker started\" = that line's "
              "time (podman's log timestamp) less the `load_seconds` it reports (its handler import + load()): "
              "container creation, the server's start and the worker interpreter's start. `podman load`: "
              + ", ".join(f"{m} {load_seconds[m]:.1f} s" for m in MODELS) + ".", "",
              "Where the time goes (one process at a time, each in a container of its own):", "",
              "| model | `podman run --rm python -c pass` s | server `import ml_serving.main` s | "
              "`import model` s | `load()` + describe s | import self time: all / stdlib modules s |",
              "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for model, f in profiles.items():
        lines.append(f"| {model} | {f['container_python_pass']:.2f} | "
                     f"{f['server_import']:.3f} | {f['import_model']:.3f} | {f['load_and_describe']:.3f} | "
                     f"{f['self_total']:.3f} / {f['self_stdlib']:.3f} |")
    for model, f in profiles.items():
        by_cumulative = sorted(f["imports"], key=lambda r: -r[1])[:12]
        by_self = sorted(f["imports"], key=lambda r: -r[0])[:8]
        lines += ["", f"{model}: `-X importtime` of the model's import + load(); cumulative ms, self ms:", ""]
        lines += [f"    {c / 1000:7.1f} {s / 1000:7.1f}  {name}" for s, c, name in by_cumulative]
        lines += ["", "  largest self times:", ""]
        lines += [f"    {c / 1000:7.1f} {s / 1000:7.1f}  {name.strip()}" for s, c, name in by_self]
    figures = {case: med(case, "ready") for case in cases}
    return lines, figures


# ---------------------------------------------------------------------------------------------
# 3. Bytes pushed after a one-line change


def push_section(before: Clone, after: Clone, work: Path) -> tuple[list[str], dict[str, float]]:
    with start_registry(work / "registry", auth="none") as registry:
        return _push_section(before, after, registry)


def _push_section(before: Clone, after: Clone, registry: RunningRegistry) -> tuple[list[str], dict[str, float]]:
    lines = ["## 3. Bytes pushed after a one-line code change (local docker-registry)", "",
             "| model | full image bytes | first push: uploaded + manifest | s | after the change: blobs "
             "uploaded | uploaded + manifest bytes | s | share of the image |",
             "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |"]
    shares = {}
    for model in MODELS:
        reference = f"127.0.0.1:{registry.port}/ml/{model}:{TAG}"
        old, new = before.package_dir(model) / "image", after.package_dir(model) / "image"
        names = {l["digest"]: kind for l, kind in zip(manifest_of(new)["layers"], ("base", "server", "deps", "code"))}
        names[manifest_of(new)["config"]["digest"]] = "config"
        start = time.monotonic()
        first = push_layout(old, reference, quiet=True)
        first_s = time.monotonic() - start
        start = time.monotonic()
        second = push_layout(new, reference, quiet=True)
        second_s = time.monotonic() - start
        full = image_bytes(old)
        sent = second.uploaded_bytes + second.manifest_size
        shares[model] = sent / full
        uploaded = ", ".join(f"{names.get(b.digest, b.digest[:19])} ({b.size:,} B)"
                             for b in second.blobs if b.action == "uploaded")
        lines.append(f"| {model} | {full:,} | {first.uploaded_bytes + first.manifest_size:,} | {first_s:.2f} | "
                     f"{uploaded} | {sent:,} | {second_s:.2f} | **{sent / full:.3%}** |")
        if manifest_digest(old) == manifest_digest(new):
            lines.append(f"| {model} | (the change did not change the image!) | | | | | | |")
    return lines, shares


# ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=5, help="Container starts per case (median).")
    parser.add_argument("--keep", action="store_true", help="Keep the scratch directory.")
    args = parser.parse_args()
    require_tools()

    scratch = Path(tempfile.mkdtemp(prefix="ml-image-bench-"))
    log(f"scratch directory {scratch}")
    commit = run(["git", "rev-parse", "HEAD"], cwd=REPO).stdout.strip()
    out: list[str] = [f"Image benchmark of commit {commit[:12]} ({os.cpu_count()} cores)", ""]
    clones: list[Clone] = []
    try:
        # 4 first: it builds everything the other sections measure. Clone `a` is built cold, then
        # after one-line changes; clone `b` is the second cold build and keeps the original images.
        a = Clone(scratch, "a")
        clones.append(a)
        b = Clone(scratch, "b")
        clones.append(b)
        section("4. cold build in clone a")
        cold_a = a.package()
        digests_a = {m: manifest_digest(a.package_dir(m) / "image") for m in MODELS}
        log(f"cold build a: {cold_a:.1f} s")
        section("4. cold build in clone b")
        cold_b = b.package()
        digests_b = {m: manifest_digest(b.package_dir(m) / "image") for m in MODELS}
        b.stop_pantsd()
        log(f"cold build b: {cold_b:.1f} s")
        section("4. one-line change to iris")
        a.edit("iris", "# bench: a one-line change")
        iris_edit = a.package()
        log(f"after the iris change: {iris_edit:.1f} s")
        section("4. one-line change to digits")
        a.edit("digits", "# bench: a one-line change")
        digits_edit = a.package()
        a.stop_pantsd()
        build_lines = [
            "## 4. Build time: `./pants package models/iris: models/digits:` in a scratch clone", "",
            "| case | seconds | vs cold |", "| --- | ---: | ---: |",
            f"| cold (empty caches, clone a) | {cold_a:.2f} | 100% |",
            f"| cold (other empty caches, clone b) | {cold_b:.2f} | {cold_b / cold_a:.1%} |",
            f"| after a one-line change to iris (clone a, pantsd warm) | {iris_edit:.2f} | {iris_edit / cold_a:.1%} |",
            f"| after a one-line change to digits (clone a) | {digits_edit:.2f} | {digits_edit / cold_a:.1%} |",
            "", "Reproducibility: image manifest digests of the two cold builds (two clones, separate empty caches):", "",
            "| model | clone a | clone b | equal |", "| --- | --- | --- | --- |",
            *(f"| {m} | {digests_a[m]} | {digests_b[m]} | {'yes' if digests_a[m] == digests_b[m] else '**NO**'} |"
              for m in MODELS),
        ]

        section("1. size")
        size_lines, size_ratios = size_section(b, scratch / "naive")
        section("3. pushes")
        push_lines, shares = push_section(b, a, scratch)
        section("2. container starts")
        start_lines, ready = start_section(b, args.starts)
    finally:
        for clone in clones:
            clone.stop_pantsd()
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)

    reproducible = all(digests_a[m] == digests_b[m] for m in MODELS)
    targets: list[tuple[str, str, bool]] = []
    for m in MODELS:
        targets.append((f"{m}: compressed size ours / naive <= 1", f"{size_ratios[m]:.3f}", size_ratios[m] <= 1))
    targets.append(("iris: start to ready < 1 s (2 workers)", f"{ready[('iris', None)]:.2f} s", ready[("iris", None)] < 1))
    targets.append(("iris: start to ready < 1 s (1 worker)", f"{ready[('iris', 1)]:.2f} s", ready[("iris", 1)] < 1))
    for m in MODELS:
        targets.append((f"{m}: bytes pushed after a one-line change < 1% of the image", f"{shares[m]:.3%}",
                        shares[m] < 0.01))
    targets.append(("one-line change rebuild < 30% of cold (README's build target)", f"{iris_edit / cold_a:.1%}",
                    iris_edit / cold_a < 0.30))
    targets.append(("two cold builds give the same manifest digests", "yes" if reproducible else "no", reproducible))
    summary = ["## Targets", "", "| target | measured | met |", "| --- | --- | --- |",
               *(f"| {name} | {value} | {'yes' if ok else '**no**'} |" for name, value, ok in targets)]
    section("end")
    out += [*size_lines, "", *start_lines, "", *push_lines, "", *build_lines, "", *summary, "",
            "Load average (1 min, the whole machine) as each step started: "
            + ", ".join(f"{name} {load:.2f}" for name, load in LOADAVG)]
    print("\n".join(out))


if __name__ == "__main__":
    main()
