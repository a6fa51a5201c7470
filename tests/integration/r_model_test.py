"""The R model (models/iris_forest): its image carries R from the system-packages layer, between
the base and the server, and podman runs it as any other model's, answering real HTTP through
the same server, OpenAPI document and Open Inference Protocol routes."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import urllib.request
from pathlib import Path

import pytest

from ml_image.engine import wait_for_200
from testutil.net import free_port
from testutil.podman import load_layout, podman_store

PACKAGES = {"iris_forest": Path("models.iris_forest/iris_forest"), "iris": Path("models.iris/iris")}
EXAMPLES = json.loads(Path("models/iris_forest/src/examples.json").read_text())
LOCK = json.loads(Path("models/iris_forest/system-packages.lock.json").read_text())


def layers_of(layout: Path) -> list:
    (descriptor,) = json.loads((layout / "index.json").read_text())["manifests"]
    blob = layout / "blobs" / "sha256" / descriptor["digest"].split(":")[1]
    return json.loads(blob.read_text())["layers"]


def members(layout: Path, layer: dict) -> dict:
    data = (layout / "blobs" / "sha256" / layer["digest"].split(":")[1]).read_bytes()
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data))) as tar:
        return {m.name: m for m in tar.getmembers()}


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_the_system_packages_are_a_layer_between_the_base_and_the_server() -> None:
    forest, iris = (layers_of(PACKAGES[m] / "image") for m in ("iris_forest", "iris"))
    assert forest[0] == iris[0], "the same base as every other model"
    assert forest[2] == iris[1], "the same server layer as every other model, after the system packages"
    system = members(PACKAGES["iris_forest"] / "image", forest[1])
    # R's binary, the packages' R libraries, and what their maintainer scripts would have made.
    for path in ("usr/lib/R/bin/exec/R", "usr/lib/R/site-library/randomForest/DESCRIPTION",
                 "usr/lib/R/site-library/jsonlite/DESCRIPTION", "etc/R/Renviron", "usr/bin/dash"):
        assert path in system, path
    assert system["etc/alternatives/libblas.so.3-x86_64-linux-gnu"].linkname == "/usr/lib/x86_64-linux-gnu/blas/libblas.so.3"
    assert system["usr/lib/x86_64-linux-gnu/libblas.so.3"].linkname == "/etc/alternatives/libblas.so.3-x86_64-linux-gnu"
    assert system["usr/bin/sh"].linkname == "dash"
    # Nothing of the base's packages again, no docs, and the base's merged-/usr links untouched.
    base = {p["name"] for p in json.loads(Path("platform/ml_image/debian-base.lock.json").read_text())["packages"]}
    assert not base & {p["name"] for p in LOCK["packages"]}
    assert not any(name.startswith("usr/share/doc/") for name in system)
    assert not {"bin", "lib", "lib64", "sbin"} & set(system)
    assert all(m.mtime == 0 and m.uid == 0 for m in system.values())


@pytest.fixture
def podman():
    with podman_store() as podman:
        yield podman


def test_podman_runs_the_r_model_image(podman) -> None:
    load_layout(podman, PACKAGES["iris_forest"] / "image")
    port = free_port()
    container = podman("run", "-d", "-e", f"ML_PORT={port}", "-e", "ML_HOST=127.0.0.1",
                       "localhost/ml/iris_forest:v1").stdout.strip()
    try:
        url = f"http://127.0.0.1:{port}"
        assert wait_for_200(f"{url}/v2/health/ready", 60), podman("logs", container, check=False).stderr
        predictions = post(f"{url}/v1/predict", {"flowers": EXAMPLES["inputs"]})
        correct = sum(p["species"] == label for p, label in zip(predictions, EXAMPLES["labels"]))
        assert correct >= 0.9 * len(EXAMPLES["labels"])
        assert all(abs(sum(p["probabilities"].values()) - 1) < 1e-9 for p in predictions)
        # The Open Inference Protocol maps a [rows, 4] tensor onto the flowers, as for a Python model.
        flower = EXAMPLES["inputs"][0]
        infer = post(f"{url}/v2/models/iris_forest/infer", {"inputs": [
            {"name": "flowers", "shape": [1, 4], "datatype": "FP64", "data": list(flower.values())}]})
        assert infer["outputs"][0]["data"] == [predictions[0]["species"]]
        # The model refuses what its schema allows but a flower cannot be: a 422 from R's ml_reject.
        with pytest.raises(urllib.error.HTTPError) as refused:
            post(f"{url}/v1/predict", {"flowers": [{**flower, "petal_width": 1000}]})
        assert refused.value.code == 422
        assert "petal_width is 1000 cm" in json.loads(refused.value.read())["detail"]
        with urllib.request.urlopen(f"{url}/openapi.json", timeout=10) as response:
            assert "Flower" in json.loads(response.read())["components"]["schemas"]
        inspect = json.loads(podman("inspect", container).stdout)[0]
        assert inspect["Config"]["User"] == "65532:65532"
    finally:
        podman("stop", "--time", "20", container, check=False)
    assert '"event": "worker_ready"' in podman("logs", container, check=False).stderr
    # SIGTERM to PID 1 (the server) drains, stops the R worker and exits 0.
    assert podman("inspect", "--format", "{{.State.ExitCode}}", container).stdout.strip() == "0"
