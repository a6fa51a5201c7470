"""A standard Open Inference Protocol client (Triton's `tritonclient.http`) against the iris
model's generated server."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton

from integration.served_model import ServedModel

PACKAGE = Path("models.iris/iris")


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    served = ServedModel(PACKAGE, tmp_path_factory.mktemp("iris"), "--workers", "1")
    try:
        yield served.url.removeprefix("http://")
    finally:
        assert served.stop() == 0


def test_health_and_metadata(url: str) -> None:
    client = triton.InferenceServerClient(url)
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("iris")
    assert client.is_model_ready("iris", model_version="1")
    metadata = client.get_model_metadata("iris")
    assert metadata["name"] == "iris" and metadata["versions"] == ["1"]
    assert [i["name"] for i in metadata["inputs"]] == ["flowers"]


def test_infer(url: str) -> None:
    client = triton.InferenceServerClient(url)
    flowers = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
    tensor = triton.InferInput("flowers", list(flowers.shape), "FP32")
    tensor.set_data_from_numpy(flowers, binary_data=False)
    outputs = [triton.InferRequestedOutput("species", binary_data=False),
               triton.InferRequestedOutput("probabilities", binary_data=False)]
    for version in ("", "1"):
        result = client.infer("iris", [tensor], model_version=version, outputs=outputs)
        species = [s.decode() if isinstance(s, bytes) else s for s in result.as_numpy("species")]
        assert species == ["setosa", "virginica"]
        probabilities = [json.loads(p) for p in result.as_numpy("probabilities")]
        assert probabilities[0]["setosa"] > 0.9


def test_infer_errors_are_reported(url: str) -> None:
    client = triton.InferenceServerClient(url)
    wrong = triton.InferInput("flowers", [1, 3], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32), binary_data=False)
    with pytest.raises(triton.InferenceServerException):
        client.infer("iris", [wrong])
    with pytest.raises(triton.InferenceServerException):
        client.infer("no-such-model", [wrong])
