"""Running a model image through a Docker-API engine with the docker SDK: podman's
Docker-compatible socket, started (and stopped) by this test on a private unix socket."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from ml_image import engine
from testutil.podman import podman_service, podman_store
from testutil.net import free_port

IMAGE_LAYOUT = Path("models.iris/iris/image")


@pytest.fixture
def podman_socket(monkeypatch):
    """podman's Docker-compatible API on a private socket, for the length of one test."""
    with podman_store() as podman, podman_service(podman) as docker_host:
        monkeypatch.setenv("DOCKER_HOST", docker_host)
        yield docker_host


def test_run_the_iris_image_through_the_docker_api(podman_socket: str) -> None:
    client = engine.connect()
    image = engine.load(client, IMAGE_LAYOUT)
    assert image == "localhost/ml/iris:v1" or image.endswith("ml/iris:v1")
    model = engine.run(client, image, free_port())
    try:
        request = urllib.request.Request(
            f"{model.url}/v1/predict",
            data=json.dumps({"flowers": [{"sepal_length": 5.1, "sepal_width": 3.5,
                                          "petal_length": 1.4, "petal_width": 0.2}]}).encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.loads(response.read())[0]["species"] == "setosa"
    finally:
        assert model.stop() == 0  # SIGTERM: drained, exit 0


def test_no_engine_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(engine.EngineUnavailable) as excinfo:
        engine.connect(f"unix://{tmp_path}/nothing.sock")
    message = str(excinfo.value)
    assert "No Docker-API engine is reachable" in message
    assert "podman system service" in message and "DOCKER_HOST" in message
