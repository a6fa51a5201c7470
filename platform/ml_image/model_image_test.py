from __future__ import annotations

import json
from pathlib import Path

from ml_image import model_image
from ml_image.layers import Entry, LayerInfo, write_layer
from ml_image.registry import Auth, push_layout
from testutil.registry import start_registry


def _layer_dir(path: Path, entries: list[Entry]) -> Path:
    path.mkdir(parents=True)
    write_layer(entries, path / "layer.tar.gz").write(path / "layer.json")
    return path


def _base_layout(tmp_path: Path) -> Path:
    """A two-layer stand-in for a python.org-style base: python3.11 in /usr/local/bin."""
    layers = [
        _layer_dir(tmp_path / "l0", [Entry("/etc/os-release", "file", data=b"ID=test\n")]),
        _layer_dir(tmp_path / "l1", [Entry("/usr/local/bin/python3.11", "file", 0o755, data=b"")]),
    ]
    config = model_image.image_config(
        [LayerInfo.read(d / "layer.json") for d in layers] + [], name="base", version=1,
        address="-", revision="-", env={"PYTHON_VERSION": "3.11.9", "LANG": "C.UTF-8"},
        description="base",
    )
    layout = tmp_path / "base-layout"
    model_image.assemble(layers, config, layout, "base:1")
    return layout


def test_base_from_registry_then_model_image_on_top(tmp_path: Path) -> None:
    with start_registry(tmp_path / "registry", auth="none") as registry:
        pushed = push_layout(_base_layout(tmp_path), f"{registry.host}/base:1", Auth(), quiet=True)
        reference = f"{registry.host}/base:1@{pushed.manifest_digest}"
        base = model_image.base_from_registry(reference, tmp_path / "base", tmp_path / "cache")
    assert base["python_path"] == "/usr/local/bin/python3.11"
    assert base["python_version"] == "3.11.9"
    assert base["layers"] == 2
    assert "LANG=C.UTF-8" in base["env"]

    # The model's layers point their venvs at the base's interpreter, and the image keeps the
    # base's layers first and its environment.
    server = _layer_dir(tmp_path / "server", list(model_image.venv_entries(model_image.SERVER_ROOT, base["python_path"])))
    code = _layer_dir(tmp_path / "code", [Entry("/opt/ml/model/x.py", "file", data=b"")])
    layout = tmp_path / "model-layout"
    assert model_image.main([
        "assemble", "--base", str(tmp_path / "base"), "--layer", str(server), "--layer", str(code),
        "--manifest", json.dumps({"name": "m", "version": 1, "address": "models/m:m"}),
        "--tag", "ml/m:v1", "--layout", str(layout),
    ]) == 0
    index = json.loads((layout / "index.json").read_text())
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / index["manifests"][0]["digest"].split(":")[1]).read_text())
    config = json.loads((blobs / manifest["config"]["digest"].split(":")[1]).read_text())
    assert len(manifest["layers"]) == 4
    assert "LANG=C.UTF-8" in config["config"]["Env"]
    assert config["config"]["Labels"]["org.opencontainers.image.base.name"] == reference
    assert config["history"][0]["created_by"] == "base layer 1"


def test_docker_archive_is_streamed_from_the_layout(tmp_path: Path) -> None:
    import io
    import json
    import tarfile

    layout = _base_layout(tmp_path)
    sink = io.BytesIO()
    assert model_image.write_docker_archive(layout, sink) == "base:1"
    with tarfile.open(fileobj=io.BytesIO(sink.getvalue())) as tar:
        (entry,) = json.loads(tar.extractfile("manifest.json").read())
        assert entry["RepoTags"] == ["base:1"] and len(entry["Layers"]) == 2
        for member in (entry["Config"], *entry["Layers"]):
            # Each blob is the layout's own bytes.
            assert tar.extractfile(member).read() == (layout / member).read_bytes()
