"""The vision models, packaged and served for real: images in as raw PNG/JPEG/octet-stream
bodies or as base64 in JSON, segments out with COCO run-length masks, undecodable images
refused with a 422, concurrent images batched.

Their weights are seeded random ones (no pretrained ones can be had here): the tests check the
contract (sizes, boxes, masks that decode to the image's size and area), not what is found.
"""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import json
import tarfile
from pathlib import Path
from typing import Iterator

import pytest

from integration.served_model import ServedModel
from ml_shared.masks import decode_counts

IMAGES = Path(__file__).parent / "images"
PNG, JPEG = (IMAGES / "scene.png").read_bytes(), (IMAGES / "scene.jpg").read_bytes()
WIDTH, HEIGHT = 320, 240
PACKAGES = {name: Path(f"models.{name}/{name}") for name in ("mask2former", "mask_rcnn")}


@pytest.fixture(scope="module", params=sorted(PACKAGES))
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedModel]:
    # A packed PEX's first start unpacks torch into PEX_ROOT.
    served = ServedModel(PACKAGES[request.param], tmp_path_factory.mktemp(request.param), start_timeout=300)
    try:
        yield served
    finally:
        served.stop()


def check_segmentation(answer: dict) -> None:
    assert (answer["width"], answer["height"]) == (WIDTH, HEIGHT)
    assert answer["segments"], "threshold 0 returns every segment the model proposes"
    for segment in answer["segments"]:
        x0, y0, x1, y1 = segment["box"]
        assert 0 <= x0 < x1 <= WIDTH and 0 <= y0 < y1 <= HEIGHT
        mask = segment["mask"]
        assert mask["size"] == [HEIGHT, WIDTH] and isinstance(mask["counts"], str)
        runs = decode_counts(mask["counts"])
        assert sum(runs) == WIDTH * HEIGHT  # column-major runs of 0s and 1s covering the image
        assert sum(runs[1::2]) == segment["area"] > 0
        assert 0.0 <= segment["score"] <= 1.0 and isinstance(segment["label"], str)
    scores = [s["score"] for s in answer["segments"]]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("content_type, body", [
    ("image/png", PNG), ("image/jpeg", JPEG), ("application/octet-stream", PNG)])
def test_a_raw_image_body(served: ServedModel, content_type: str, body: bytes) -> None:
    # A raw body fills `image`; `threshold` keeps its default (0.5), which random weights rarely
    # reach: any answer is a valid segmentation of the whole image.
    status, _, answer = served.request("POST", "/v1/predict", raw=body, headers={"content-type": content_type})
    assert status == 200, answer
    assert (answer["width"], answer["height"]) == (WIDTH, HEIGHT)


def test_base64_in_json_with_a_threshold(served: ServedModel) -> None:
    status, _, answer = served.request("POST", "/v1/predict",
                                       {"image": base64.b64encode(PNG).decode(), "threshold": 0.0})
    assert status == 200, answer
    check_segmentation(answer)


@pytest.mark.parametrize("body, detail", [
    (b"not an image at all", "cannot decode the image"),
    (PNG[:200], "cannot decode the image"),
])
def test_an_image_that_cannot_be_decoded_is_422(served: ServedModel, body: bytes, detail: str) -> None:
    status, _, answer = served.request("POST", "/v1/predict", raw=body, headers={"content-type": "image/png"})
    assert status == 422 and detail in answer["detail"], answer


def test_concurrent_images_are_batched_each_with_its_own_answer(served: ServedModel) -> None:
    body = {"image": base64.b64encode(JPEG).decode(), "threshold": 0.0}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        # Four images in one batch: Mask R-CNN on this 2-core CPU takes seconds per image.
        answers = list(pool.map(lambda i: served.request("POST", "/v1/predict", body, {"x-request-id": f"img-{i}"},
                                                         timeout=180), range(4)))
    for i, (status, headers, answer) in enumerate(answers):
        assert status == 200 and headers["x-request-id"] == f"img-{i}"
        check_segmentation(answer)


def test_openapi_takes_images_and_says_the_weights_are_random(served: ServedModel) -> None:
    _, _, spec = served.request("GET", "/openapi.json")
    content = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert {"application/json", "image/png", "image/jpeg", "application/octet-stream"} <= set(content)
    assert "random" in spec["info"]["description"]


# mask_rcnn's weights are made at build time by its `artifacts_script` (src/weights.py: seed 0,
# torch 2.14.1, on the CPU): the same bytes in every build on every host, so a clone rebuilds
# the image bit for bit although the 176 MB file is not in git.
MASK_RCNN_WEIGHTS = "artifacts/mask_rcnn/model.pt"
MASK_RCNN_WEIGHTS_SHA256 = "8607137fc30e63cfe011ae116c5fc432923f3b14d2073bdccebb7dedb6249180"


def layer_files(layout: Path) -> list[set[str]]:
    """The file names in each layer of the image in an OCI layout, in order."""
    index = json.loads((layout / "index.json").read_text())
    blob = lambda digest: layout / "blobs" / "sha256" / digest.split(":")[1]  # noqa: E731
    manifest = json.loads(blob(index["manifests"][0]["digest"]).read_text())
    layers = []
    for layer in manifest["layers"]:
        with tarfile.open(blob(layer["digest"]), "r:gz") as tar:
            layers.append({member.name for member in tar if member.isfile()})
    return layers


def test_mask_rcnn_weights_are_generated_at_build_time_the_same_and_layered_apart() -> None:
    package = PACKAGES["mask_rcnn"]
    weights = package / "model.pex" / MASK_RCNN_WEIGHTS
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == MASK_RCNN_WEIGHTS_SHA256
    *_, generated, code = layer_files(package / "image")
    # Their own layer, before the code's: a code change neither rebuilds nor re-pushes them.
    assert [name.rsplit("site-packages/", 1)[1] for name in generated] == [MASK_RCNN_WEIGHTS]
    assert not any(name.endswith(MASK_RCNN_WEIGHTS) for name in code)
    assert any(name.endswith("site-packages/model.py") for name in code)
