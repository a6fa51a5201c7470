#!/usr/bin/env python3
"""The figures of the models beyond one Python runtime, side by side in one run: tabular_tf
(Keras on TensorFlow 2.21, CPU) and iris_forest (R's randomForest, R from the system-packages
layer). For each:

  image       the image's compressed size, and its layers (the system packages' separately)
  cold        `./pants --no-local-cache package` of the model: every build process runs again
              (the base, the system packages, each wheel's layer, the PEX); downloads stay in
              Pants' and pex's caches, as on any machine that built once
  ready       process start to the first correct answer of the served package (median of runs)
  latency     p50/p99 of one-row predictions at concurrency 1 and 32 (wrk, the model's own
              workers: one each), beside the raw call in the model's own environment (Keras'
              traced forward pass for tabular_tf; `predict()` in R itself for iris_forest)

Usage: ./pants run bench/runtimes.py -- [--no-build] [--no-cold] [--duration S] [--runs N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from ml_contract.package_layout import SYSTEM_PACKAGES_LOCK
from ml_image import model_image
from serving import Server, ensure_wrk, log, package_model, run_wrk, wrk_script
from testutil import scratch
from testutil.net import free_port

REPO = scratch.repo_root()

TF_FLOOR = r"""
import json, statistics, sys, time
from model import Model, Wine
model = Model(); model.load()
wine = Wine(**json.loads(sys.argv[1]))
times = []
for _ in range(int(sys.argv[2])):
    t = time.perf_counter(); model.predict([wine]); times.append(time.perf_counter() - t)
times.sort()
print(json.dumps({"p50": statistics.median(times) * 1e3, "p99": times[int(len(times) * 0.99)] * 1e3}))
"""

R_FLOOR = r"""
suppressPackageStartupMessages(library(randomForest))
args <- commandArgs(trailingOnly = TRUE)
forest <- readRDS(args[[1]])
flower <- jsonlite::fromJSON(args[[2]])
frame <- data.frame(Sepal.Length = flower$sepal_length, Sepal.Width = flower$sepal_width,
                    Petal.Length = flower$petal_length, Petal.Width = flower$petal_width)
times <- vapply(seq_len(as.integer(args[[3]])), function(i) {
  t <- Sys.time(); predict(forest, frame, type = "prob"); as.numeric(Sys.time() - t, units = "secs")
}, numeric(1))
cat(jsonlite::toJSON(list(p50 = median(times) * 1e3, p99 = unname(quantile(times, 0.99, type = 1)) * 1e3),
                     auto_unbox = TRUE, digits = NA), "\n")
"""


def examples(name: str) -> dict:
    return json.loads((REPO / "models" / name / "src" / "examples.json").read_text())


MODELS = {
    "tabular_tf": {"parameter": "wines", "label": lambda answer: str(answer[0]["cultivar"])},
    "iris_forest": {"parameter": "flowers", "label": lambda answer: answer[0]["species"]},
}


def dist(name: str) -> Path:
    return REPO / "dist" / f"models.{name}" / name


def image_layers(name: str) -> list[tuple[str, int]]:
    """(what, compressed bytes) of each layer, in image order (image.py's order)."""
    layout = dist(name) / "image"
    (descriptor,) = json.loads((layout / "index.json").read_text())["manifests"]
    layers = json.loads((layout / "blobs" / "sha256" / descriptor["digest"].split(":")[1]).read_text())["layers"]
    system = (REPO / "models" / name / SYSTEM_PACKAGES_LOCK).exists()
    wheels = [w.name.split("-")[0] for w in model_image.own_layer_wheels(dist(name) / "model.pex")]
    names = ["base", *(["system packages"] if system else []), "server", *wheels, "other deps", "code"]
    if len(names) != len(layers):  # a generated-artifacts layer, or a layout this script does not know
        names = [f"layer {i}" for i in range(len(layers))]
    return [(n, layer["size"]) for n, layer in zip(names, layers)]


def cold_package(name: str) -> float:
    log(f"cold: ./pants --no-local-cache package models/{name}: ...")
    started = time.perf_counter()
    result = subprocess.run(["./pants", "--no-dynamic-ui", "--no-local-cache", "package", f"models/{name}:"],
                            cwd=REPO, env={**os.environ, "PANTS_CONCURRENT": "true"}, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"error: cold package of {name} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def floor(name: str, calls: int) -> dict:
    one = examples(name)["inputs"][0]
    if name == "tabular_tf":
        command = [str(dist(name) / "model.pex" / "__main__.py"), "-c", TF_FLOOR, json.dumps(one), str(calls)]
        env = {"PEX_INTERPRETER": "1", "OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    else:
        rds = REPO / "models" / name / "src" / "artifacts" / "forest.rds"
        command = ["Rscript", "-e", R_FLOOR, str(rds), json.dumps(one), str(calls)]
        env = {}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env={**os.environ, **env})
    if result.returncode != 0:
        raise RuntimeError(f"{name}'s floor failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def server(name: str, tmp: Path) -> Server:
    spec = MODELS[name]
    one = examples(name)
    body = json.dumps({spec["parameter"]: one["inputs"][:1]}, separators=(",", ":"))
    port = free_port()
    return Server(name, [str(dist(name) / "model.pex" / "__main__.py"), "--port", str(port)],
                  f"http://127.0.0.1:{port}/v1/predict", body, spec["label"], REPO, tmp,
                  expected=str(one["labels"][0]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-build", action="store_true", help="measure the packages already in dist/")
    parser.add_argument("--no-cold", action="store_true", help="skip the cold package builds")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per concurrency")
    parser.add_argument("--runs", type=int, default=3, help="starts measured per model")
    args = parser.parse_args()
    wrk = ensure_wrk()
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-runtimes-") as tmp_dir:
        tmp = Path(tmp_dir)
        for name in MODELS:
            figures = results[name] = {}
            if not args.no_cold:
                figures["cold"] = cold_package(name)
            else:
                package_model(f"models/{name}:", dist(name), args.no_build)
            figures["layers"] = image_layers(name)
            figures["floor"] = floor(name, 2000)
            ready = []
            for run in range(args.runs):
                s = server(name, tmp)
                s.start()
                try:
                    s.wait_ready()
                    ready.append(s.ready_seconds)
                    if run == args.runs - 1:
                        script = wrk_script(tmp, name, s.body)
                        run_wrk(wrk, s, script, 1, 1, 2.0)  # warm-up
                        figures["c1"] = run_wrk(wrk, s, script, 1, 1, args.duration)
                        figures["c32"] = run_wrk(wrk, s, script, 2, 32, args.duration)
                finally:
                    s.stop()
            figures["ready"] = statistics.median(ready)
            log(f"{name}: done")

    print("\n## Models beyond one runtime (this machine, one run)\n")
    for name, f in results.items():
        total = sum(size for _, size in f["layers"])
        print(f"### {name}: image {total / 1e6:.0f} MB compressed, {len(f['layers'])} layers")
        print("  " + ", ".join(f"{what} {size / 1e6:.1f} MB" for what, size in f["layers"]))
        if "cold" in f:
            print(f"  cold package: {f['cold']:.0f} s")
        print(f"  start to first answer: {f['ready']:.2f} s (median of {args.runs})")
        fl, c1, c32 = f["floor"], f["c1"], f["c32"]
        print(f"  in process: p50 {fl['p50']:.2f} ms, p99 {fl['p99']:.2f} ms")
        print(f"  served, c=1: p50 {c1.p50_ms:.2f} ms, p99 {c1.p99_ms:.2f} ms, {c1.rps:.0f} req/s "
              f"(p50 +{c1.p50_ms - fl['p50']:.2f} ms over the call itself)")
        print(f"  served, c=32: p50 {c32.p50_ms:.2f} ms, p99 {c32.p99_ms:.2f} ms, {c32.rps:.0f} req/s, "
              f"{c32.non_2xx} non-2xx, {c32.socket_errors} socket errors")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
