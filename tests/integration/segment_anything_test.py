"""Segment-Anything's two-stage serving, packaged and served for real with two workers: embed
once, prompt many times, from any worker, through the server's shared embedding cache; the
stateless round trip; bad prompts refused with the field named.

The weights are seeded random ones of a small image encoder (no SAM weights can be had here):
the tests check the contract (ids, sizes, masks that decode to the image, the cached path and
the one-shot path agreeing, the cache's counters), not what is found.
"""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
from pathlib import Path
from typing import Iterator

import pytest

from integration.served_model import ServedModel
from ml_shared.masks import decode_counts

PACKAGE = Path("models.segment_anything/segment_anything")
SHAPES = (Path(__file__).parent / "images" / "shapes.png").read_bytes()
SCENE = (Path(__file__).parent / "images" / "scene.png").read_bytes()
WIDTH, HEIGHT = 320, 240
RECTANGLE_CENTRE = {"x": 90, "y": 120}
TIMEOUT = 180  # an embedding takes seconds on this busy 2-core CPU


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedModel]:
    served = ServedModel(PACKAGE, tmp_path_factory.mktemp("sam"), start_timeout=300)
    try:
        yield served
    finally:
        assert served.stop() == 0


def post(served: ServedModel, endpoint: str, body: dict) -> tuple[int, dict]:
    status, _, answer = served.request("POST", f"/v1/{endpoint}", body, timeout=TIMEOUT)
    return status, answer


def metric(served: ServedModel, name: str) -> float:
    _, _, text = served.request("GET", "/metrics")
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.decode().splitlines() if line.startswith(name + "{"))


def check_masks(answer: dict) -> None:
    assert (answer["width"], answer["height"]) == (WIDTH, HEIGHT)
    assert answer["segments"] and len(answer["logits_id"]) == 64
    for segment in answer["segments"]:
        runs = decode_counts(segment["mask"]["counts"])
        assert segment["mask"]["size"] == [HEIGHT, WIDTH] and sum(runs) == WIDTH * HEIGHT
        assert sum(runs[1::2]) == segment["area"] > 0
    scores = [s["score"] for s in answer["segments"]]
    assert scores == sorted(scores, reverse=True)


def test_embed_once_then_prompt_by_id_and_refine(served: ServedModel) -> None:
    status, _, embedded = served.request("POST", "/v1/embed", raw=SHAPES,
                                         headers={"content-type": "image/png"}, timeout=TIMEOUT)
    assert status == 200, embedded
    assert embedded["embedding_id"] == hashlib.sha256(SHAPES).hexdigest()
    assert (embedded["width"], embedded["height"]) == (WIDTH, HEIGHT)
    status, again = post(served, "embed", {"image": base64.b64encode(SHAPES).decode()})
    assert status == 200 and again["cached"] and again["embedding_id"] == embedded["embedding_id"]

    prompt = {"embedding_id": embedded["embedding_id"], "points": [RECTANGLE_CENTRE]}
    status, answer = post(served, "segment", prompt)
    assert status == 200, answer
    check_masks(answer)
    assert len(answer["segments"]) <= 3  # multimask: up to three candidates
    # Refining: the best mask's low-resolution logits go back in with another click.
    status, refined = post(served, "segment", {**prompt, "points": [RECTANGLE_CENTRE, {"x": 60, "y": 80}],
                                               "mask_input_id": answer["logits_id"], "multimask": False})
    assert status == 200, refined
    check_masks(refined)
    assert len(refined["segments"]) == 1


def test_the_cached_path_and_the_one_shot_path_give_the_same_masks(served: ServedModel) -> None:
    image = base64.b64encode(SHAPES).decode()
    box = {"x0": 180, "y0": 60, "x1": 300, "y1": 180}
    status, one_shot = post(served, "predict", {"image": image, "box": box})
    assert status == 200, one_shot
    status, cached = post(served, "segment", {"embedding_id": hashlib.sha256(SHAPES).hexdigest(), "box": box})
    assert status == 200, cached
    assert cached["segments"] == one_shot["segments"]
    check_masks(cached)


def test_the_stateless_round_trip_gives_the_same_masks(served: ServedModel) -> None:
    status, held = post(served, "embedding", {"image": base64.b64encode(SHAPES).decode()})
    assert status == 200, held
    blob = base64.b64decode(held["embedding"])
    # fp16: 2 MiB plus a small header; with base64 and the prompt, well inside Lambda's 6 MB.
    assert 2 * 2**20 < len(blob) < 2 * 2**20 + 512
    prompt = {"points": [RECTANGLE_CENTRE]}
    status, stateless = post(served, "segment", {**prompt, "embedding": held["embedding"]})
    assert status == 200, stateless
    status, cached = post(served, "segment", {**prompt, "embedding_id": held["embedding_id"]})
    assert stateless["segments"] == cached["segments"]


def test_concurrent_first_requests_for_an_image_embed_it_once_and_both_workers_hit(served: ServedModel) -> None:
    misses = metric(served, "ml_shared_cache_misses_total")
    image = base64.b64encode(SCENE).decode()
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda i: post(served, "segment", {"image": image, "points": [{"x": 20 + 40 * i, "y": 100}]}),
                                range(6)))
    assert all(status == 200 for status, _ in answers), answers
    # Six prompts on a new image: one embedding (one cache miss for it), five hits on it, from
    # whichever worker: each answer's logits went into the cache too.
    assert metric(served, "ml_shared_cache_misses_total") == misses + 1
    assert metric(served, "ml_shared_cache_bytes") <= metric(served, "ml_shared_cache_max_bytes") == 128 * 2**20


@pytest.mark.parametrize("prompt, field", [
    ({"points": [{"x": 400, "y": 10}]}, "points[0]"),
    ({"points": [{"x": 10, "y": 10, "label": 2}]}, "points[0].label"),
    ({"points": []}, "points, box"),
    ({"box": {"x0": 100, "y0": 10, "x1": 50, "y1": 80}}, "box"),
])
def test_bad_prompts_are_422_naming_the_field(served: ServedModel, prompt: dict, field: str) -> None:
    status, answer = post(served, "segment", {"embedding_id": hashlib.sha256(SHAPES).hexdigest(), **prompt})
    assert status == 422 and answer["detail"].startswith(field + ":"), answer


def test_an_embedding_the_server_does_not_hold_is_409_saying_embed_first(served: ServedModel) -> None:
    status, answer = post(served, "segment", {"embedding_id": "0" * 64, "points": [RECTANGLE_CENTRE]})
    assert status == 409 and "/v1/embed" in answer["detail"], answer
    status, answer = post(served, "segment", {"embedding": base64.b64encode(b"junk").decode(), "points": [RECTANGLE_CENTRE]})
    assert status == 422 and answer["detail"].startswith("embedding:"), answer


def test_openapi_lists_the_three_stages(served: ServedModel) -> None:
    _, _, spec = served.request("GET", "/openapi.json")
    for endpoint in ("embed", "segment", "predict", "embedding"):
        assert f"/v1/{endpoint}" in spec["paths"]
    assert "409" in spec["paths"]["/v1/segment"]["post"]["responses"]
    assert "random" in spec["info"]["description"]
