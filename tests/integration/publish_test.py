"""Publishing the iris image `./pants package` builds to a real registry (Debian's docker-registry,
htpasswd Basic auth, on 127.0.0.1): the pushed image pulls back byte for byte, skopeo sees the same
digest, an unchanged push sends nothing, and a one-line code change sends only the code layer and
the config."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from ml_image import model_image
from ml_image.layers import LayerInfo, file_digest
from ml_image.registry import AuthenticationError, Auth, PushResult, pull, push_layout
from testutil.registry import RunningRegistry, require_tool, start_registry

PACKAGE = Path("models.iris/iris")
LAYOUT = PACKAGE / "image"
REPOSITORY = "ml/iris"
USER, PASSWORD = "publisher", "iris-Pa55word"


def blob(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.split(":")[1]


def manifest_digest_of(layout: Path) -> str:
    (descriptor,) = json.loads((layout / "index.json").read_text())["manifests"]
    return descriptor["digest"]


def manifest_of(layout: Path) -> dict:
    return json.loads(blob(layout, manifest_digest_of(layout)).read_text())


def config_of(layout: Path) -> dict:
    return json.loads(blob(layout, manifest_of(layout)["config"]["digest"]).read_text())


def blob_digests(layout: Path) -> set:
    manifest = manifest_of(layout)
    return {manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])}


def image_blob_bytes(layout: Path) -> int:
    manifest = manifest_of(layout)
    return manifest["config"]["size"] + sum(layer["size"] for layer in manifest["layers"])


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    # Missing tools fail every test here (with the apt-get line), they never skip it.
    require_tool("docker-registry", "docker-registry")
    require_tool("htpasswd", "apache2-utils")
    require_tool("skopeo", "skopeo")
    with start_registry(tmp_path_factory.mktemp("registry"), auth="htpasswd",
                        username=USER, password=PASSWORD) as running:
        yield running


@pytest.fixture(scope="module")
def first_push(registry: RunningRegistry) -> PushResult:
    """The packaged image, pushed once as ml/iris:v1 into the empty registry."""
    pushed = push_layout(LAYOUT, registry.ref(REPOSITORY, "v1"), Auth(USER, PASSWORD), quiet=True)
    assert pushed.manifest_digest == manifest_digest_of(LAYOUT)
    layers = len(manifest_of(LAYOUT)["layers"])
    assert pushed.uploaded_count == layers + 1 and pushed.skipped_count == 0  # the layers and the config
    assert pushed.uploaded_bytes == image_blob_bytes(LAYOUT)
    return pushed


def test_push_then_pull_gives_the_same_digests(registry: RunningRegistry, first_push: PushResult,
                                               tmp_path: Path) -> None:
    ref = registry.ref(REPOSITORY, "v1")
    pulled = pull(ref, tmp_path / "pulled", Auth(USER, PASSWORD), quiet=True)
    assert pulled.manifest_digest == first_push.manifest_digest == manifest_digest_of(LAYOUT)
    assert manifest_digest_of(tmp_path / "pulled") == manifest_digest_of(LAYOUT)
    assert blob(tmp_path / "pulled", pulled.manifest_digest).read_bytes() == \
        blob(LAYOUT, manifest_digest_of(LAYOUT)).read_bytes()
    expected = blob_digests(LAYOUT)
    assert {b.digest for b in pulled.blobs} == expected and pulled.downloaded_count == len(expected)
    for digest in expected:  # every blob's content hashes to its digest, in both layouts
        assert file_digest(blob(tmp_path / "pulled", digest)) == digest == file_digest(blob(LAYOUT, digest))

    # An independent client sees the same image in the registry.
    inspected = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", f"docker://{ref}", "--creds", f"{USER}:{PASSWORD}"],
        capture_output=True, text=True, timeout=120,
    )
    assert inspected.returncode == 0, inspected.stderr
    details = json.loads(inspected.stdout)
    assert details["Digest"] == manifest_digest_of(LAYOUT)
    assert details["Layers"] == [layer["digest"] for layer in manifest_of(LAYOUT)["layers"]]


def test_unchanged_push_uploads_nothing(registry: RunningRegistry, first_push: PushResult) -> None:
    again = push_layout(LAYOUT, registry.ref(REPOSITORY, "v1"), Auth(USER, PASSWORD), quiet=True)
    assert again.manifest_digest == first_push.manifest_digest
    assert again.uploaded_count == 0 and again.uploaded_bytes == 0
    assert again.skipped_count == len(manifest_of(LAYOUT)["layers"]) + 1
    assert again.skipped_bytes == image_blob_bytes(LAYOUT)


def test_one_line_code_change_pushes_only_the_code_layer(registry: RunningRegistry, first_push: PushResult,
                                                         tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    manifest, config = manifest_of(LAYOUT), config_of(LAYOUT)
    layers, diff_ids = manifest["layers"], config["rootfs"]["diff_ids"]
    # base, server, a layer per big dependency, the other dependencies, code
    assert len(layers) == len(diff_ids) == 4 + len(model_image.own_layer_wheels(PACKAGE / "model.pex"))

    # The model's package with one comment line added to its code. (The code layer leaves out
    # the PEX's own files, .deps and .bootstrap among them, so the copy does without them.)
    pex = tmp_path / "model.pex"
    shutil.copytree(PACKAGE / "model.pex", pex, ignore=shutil.ignore_patterns(".deps", ".bootstrap"))
    unchanged = tmp_path / "unchanged-code"
    unchanged.mkdir()
    assert model_image.code_layer(pex, unchanged).digest == layers[-1]["digest"], \
        "the copied package does not rebuild the packaged code layer"
    with (pex / "model.py").open("a") as f:
        f.write("# a one-line change\n")

    # Rebuild only the code layer; the others come from the packaged layout as they are.
    layer_dirs = []
    for i in range(len(layers) - 1):
        directory = tmp_path / f"layer-{i}"
        directory.mkdir()
        shutil.copy(blob(LAYOUT, layers[i]["digest"]), directory / "layer.tar.gz")
        LayerInfo(layers[i]["digest"], layers[i]["size"], diff_ids[i]).write(directory / "layer.json")
        layer_dirs.append(directory)
    code_dir = tmp_path / "code"
    code_dir.mkdir()
    code = model_image.code_layer(pex, code_dir)
    code.write(code_dir / "layer.json")
    layer_dirs.append(code_dir)
    assert code.digest != layers[-1]["digest"] and code.diff_id != diff_ids[-1]

    new_config = json.loads(json.dumps(config))
    new_config["rootfs"]["diff_ids"][-1] = code.diff_id
    layout = tmp_path / "image"
    digest = model_image.assemble(layer_dirs, new_config, layout, "ml/iris:v2")
    assert digest != first_push.manifest_digest
    new_manifest = manifest_of(layout)
    assert [l["digest"] for l in new_manifest["layers"]] == [l["digest"] for l in layers[:-1]] + [code.digest]
    config_size = new_manifest["config"]["size"]

    pushed = push_layout(layout, registry.ref(REPOSITORY, "v2"), Auth(USER, PASSWORD), quiet=True)
    assert pushed.manifest_digest == digest
    uploaded = {b.digest for b in pushed.blobs if b.action == "uploaded"}
    assert uploaded == {code.digest, new_manifest["config"]["digest"]}
    assert {b.digest for b in pushed.blobs if b.action == "skipped"} == {l["digest"] for l in layers[:-1]}
    assert pushed.uploaded_bytes == code.size + config_size

    full = image_blob_bytes(layout)
    share = pushed.uploaded_bytes / full
    with capsys.disabled():
        print(f"\none-line code change: pushed {pushed.uploaded_bytes:,} bytes of blobs "
              f"(code layer {code.size:,} + config {config_size:,}) of the image's {full:,} "
              f"({share:.3%}); manifest {pushed.manifest_size:,} bytes")
    assert share < 0.01, f"pushed {pushed.uploaded_bytes} of {full} bytes ({share:.2%})"

    # The registry serves the new tag with exactly these blobs.
    pulled = pull(registry.ref(REPOSITORY, "v2"), tmp_path / "pulled", Auth(USER, PASSWORD), quiet=True)
    assert pulled.manifest_digest == digest and {b.digest for b in pulled.blobs} == blob_digests(layout)


def test_wrong_password_names_the_registry(registry: RunningRegistry, tmp_path: Path) -> None:
    with pytest.raises(AuthenticationError) as refused:
        push_layout(LAYOUT, registry.ref(REPOSITORY, "v1"), Auth(USER, "not-the-password"), quiet=True)
    message = str(refused.value)
    assert registry.host in message and REPOSITORY in message
    assert "HTTP 401" in message and f"the registry refused user '{USER}'" in message
    assert "not-the-password" not in message and refused.value.status == 401
    with pytest.raises(AuthenticationError) as pulled:
        pull(registry.ref(REPOSITORY, "v1"), tmp_path / "out", Auth(USER, "not-the-password"), quiet=True)
    assert registry.host in str(pulled.value) and "HTTP 401" in str(pulled.value)
    assert "authentication required" in str(pulled.value)
