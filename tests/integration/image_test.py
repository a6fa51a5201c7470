"""The model images `./pants package` builds: accepted by skopeo and umoci, layered as promised,
reproducible, and run by podman (runc, host network on 127.0.0.1) answering real HTTP."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from ml_image import model_image
from ml_image.engine import wait_for_200
from ml_image.layers import LayerInfo
from testutil.podman import load_layout, podman_store
from testutil.net import free_port
from testutil.registry import require_tool

PACKAGES = {"iris": Path("models.iris/iris"), "digits": Path("models.digits/digits")}
def run(*argv: str, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{' '.join(argv)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def manifest_of(layout: Path) -> dict:
    index = json.loads((layout / "index.json").read_text())
    (descriptor,) = index["manifests"]
    return json.loads((layout / "blobs" / "sha256" / descriptor["digest"].split(":")[1]).read_text())


def config_of(layout: Path) -> dict:
    digest = manifest_of(layout)["config"]["digest"]
    return json.loads((layout / "blobs" / "sha256" / digest.split(":")[1]).read_text())


@pytest.mark.parametrize("model", sorted(PACKAGES))
def test_skopeo_and_umoci_accept_the_image(model: str, tmp_path: Path) -> None:
    require_tool("skopeo", "skopeo")
    require_tool("umoci", "umoci")
    layout, tarball = PACKAGES[model] / "image", tmp_path / "image.tar"
    inspected = json.loads(run("skopeo", "inspect", f"oci:{layout}").stdout)
    assert inspected["Labels"]["org.opencontainers.image.title"] == model
    assert inspected["Labels"]["ml-platform.model.version"] == "1"
    # base, server, a layer per big dependency, the other dependencies, code
    assert len(inspected["Layers"]) == 4 + len(model_image.own_layer_wheels(PACKAGES[model] / "model.pex"))
    # What `docker load` reads, made from the layout on demand.
    with tarball.open("wb") as f:
        model_image.write_docker_archive(layout, f)
    from_tar = json.loads(run("skopeo", "inspect", f"docker-archive:{tarball}").stdout)
    # A docker archive names layers by their uncompressed digests.
    assert from_tar["Layers"] == config_of(layout)["rootfs"]["diff_ids"]
    # umoci verifies every blob's digest while unpacking.
    run("umoci", "unpack", "--rootless", "--image", f"{layout}:v1", str(tmp_path / "bundle"))
    rootfs = tmp_path / "bundle" / "rootfs"
    assert (rootfs / "usr/bin/python3.11").exists()
    assert (rootfs / "opt/ml/server/lib/python3.11/site-packages/ml_serving/main.py").exists()
    assert (rootfs / "opt/ml/model/lib/python3.11/site-packages/model.py").exists()
    assert (rootfs / "opt/ml/model/lib/python3.11/site-packages/artifacts").is_dir()
    # Dependencies are installed and byte-compiled at build time.
    assert list((rootfs / "opt/ml/model/lib/python3.11/site-packages/sklearn/__pycache__").glob("*.pyc"))


def test_image_config() -> None:
    config = config_of(PACKAGES["iris"] / "image")
    assert config["config"]["User"] == "65532:65532"
    assert config["config"]["Entrypoint"][-3:] == ["-m", "__ml_model_main__", "serve"]
    assert "8080/tcp" in config["config"]["ExposedPorts"]
    labels = config["config"]["Labels"]
    assert labels["ml-platform.model.address"] == "models/iris:iris"
    assert len(labels["org.opencontainers.image.revision"]) in (40, len("unknown"))
    assert "created" not in config  # a timestamp would make every build's digest differ


def test_layers_are_shared_where_promised() -> None:
    iris, digits = (manifest_of(PACKAGES[m] / "image")["layers"] for m in ("iris", "digits"))
    assert iris[0] == digits[0], "the base layer differs between models"
    assert iris[1] == digits[1], "the server layer must be byte-identical in every model's image"
    # base, server, one layer per big dependency (by wheel name), the other dependencies, code.
    wheels = {m: model_image.own_layer_wheels(PACKAGES[m] / "model.pex") for m in ("iris", "digits")}
    assert wheels["iris"], "iris locks numpy, scipy and scikit-learn: big enough for layers of their own"
    assert len(iris) == 4 + len(wheels["iris"]) and len(digits) == 4 + len(wheels["digits"])
    shared = {w.name for w in wheels["iris"]} & {w.name for w in wheels["digits"]}
    for name in shared:  # the same wheel locked by both: the same layer in both images
        assert iris[2 + [w.name for w in wheels["iris"]].index(name)] == \
            digits[2 + [w.name for w in wheels["digits"]].index(name)], name
    assert iris[-1] != digits[-1]  # their code
    # Least to most often changed: the code layer is tiny next to the dependencies.
    assert iris[-1]["size"] < 200_000 < sum(layer["size"] for layer in iris[2:-1])


def test_rebuilding_gives_the_same_digests(tmp_path: Path) -> None:
    """The builder is deterministic: the same package gives byte-identical layers and manifest."""
    package = PACKAGES["iris"]
    layout = package / "image"
    built = manifest_of(layout)
    layer_dirs = []
    wheels = model_image.own_layer_wheels(package / "model.pex")
    # The deps layer's process gets the other wheels only.
    small = tmp_path / "small" / "model.pex"
    shutil.copytree(package / "model.pex" / ".deps", small / ".deps",
                    ignore=lambda _, names: {w.name for w in wheels} & set(names))
    for name, build, source in (
        ("server", model_image.server_layer, package / "server.pex"),
        *((f"wheel-{i}", model_image.wheel_layer, wheel) for i, wheel in enumerate(wheels)),
        ("deps", model_image.deps_layer, small),
        ("code", model_image.code_layer, package / "model.pex"),
    ):
        out = tmp_path / name
        out.mkdir()
        build(source, out).write(out / "layer.json")
        layer_dirs.append(out)
    rebuilt = [LayerInfo.read(d / "layer.json").digest for d in layer_dirs]
    assert rebuilt == [layer["digest"] for layer in built["layers"][1:]]
    # Same layers and the same config give the same manifest digest.
    base = tmp_path / "base"
    base.mkdir()
    base_digest = built["layers"][0]["digest"]
    shutil.copy(layout / "blobs" / "sha256" / base_digest.split(":")[1], base / "layer.tar.gz")
    diff_id = config_of(layout)["rootfs"]["diff_ids"][0]
    LayerInfo(base_digest, built["layers"][0]["size"], diff_id).write(base / "layer.json")
    digest = model_image.assemble(
        [base, *layer_dirs], config_of(layout), tmp_path / "layout", "ml/iris:v1"
    )
    index = json.loads((layout / "index.json").read_text())
    assert digest == index["manifests"][0]["digest"]


@pytest.fixture
def podman():
    with podman_store() as podman:
        yield podman


def test_podman_runs_the_iris_image(podman) -> None:
    load_layout(podman, PACKAGES["iris"] / "image")
    port = free_port()
    container = podman("run", "-d", "-e", f"ML_PORT={port}", "-e", "ML_HOST=127.0.0.1",
                       "localhost/ml/iris:v1").stdout.strip()
    try:
        url = f"http://127.0.0.1:{port}"
        assert wait_for_200(f"{url}/v2/health/ready", 60), podman("logs", container, check=False).stderr
        request = urllib.request.Request(
            f"{url}/v1/predict",
            data=json.dumps({"flowers": [{"sepal_length": 6.7, "sepal_width": 3.0,
                                          "petal_length": 5.2, "petal_width": 2.3}]}).encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.loads(response.read())[0]["species"] == "virginica"
        inspect = json.loads(podman("inspect", container).stdout)[0]
        assert inspect["Config"]["User"] == "65532:65532"
    finally:
        podman("stop", "--time", "20", container, check=False)
    # SIGTERM to PID 1 (the server) drains and exits 0.
    assert podman("inspect", "--format", "{{.State.ExitCode}}", container).stdout.strip() == "0"
