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
import json
import struct
from pathlib import Path
from typing import Iterator

import pytest

from integration.served_model import ServedModel
from ml_contract.model_settings import LAMBDA_MAX_PAYLOAD_BYTES
from ml_shared.masks import decode_counts

PACKAGE = Path("models.segment_anything/segment_anything")
SHAPES = (Path(__file__).parent / "images" / "shapes.png").read_bytes()
SCENE = (Path(__file__).parent / "images" / "scene.png").read_bytes()
SCENE_JPEG = (Path(__file__).parent / "images" / "scene.jpg").read_bytes()
WIDTH, HEIGHT = 320, 240
RECTANGLE_CENTRE = {"x": 90, "y": 120}
TIMEOUT = 180  # an embedding takes seconds on this busy 2-core CPU
MiB = 2**20
# The documented tolerance of fp16 embeddings: masks within this IoU of the fp32 path's, scores
# within this difference.
FP16_MIN_IOU, FP16_MAX_SCORE_DIFFERENCE = 0.99, 0.01


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedModel]:
    # Two workers (the model's default is one per GPU) to prove that they share the cache.
    served = ServedModel(PACKAGE, tmp_path_factory.mktemp("sam"), "--workers", "2", "--threads", "1",
                         start_timeout=300)
    try:
        yield served
    finally:
        assert served.stop() == 0


@pytest.fixture(scope="module")
def exact(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedModel]:
    """fp32 embeddings (4 MiB each) in a cache that holds two of them."""
    served = ServedModel(PACKAGE, tmp_path_factory.mktemp("sam-fp32"), "--workers", "1", start_timeout=300,
                         env={"SAM_EMBEDDING_DTYPE": "float32", "ML_SHARED_CACHE_BYTES": str(10 * MiB)})
    try:
        yield served
    finally:
        assert served.stop() == 0


def embed(served: ServedModel, image: bytes) -> dict:
    status, _, embedded = served.request("POST", "/v1/embed", raw=image, headers={"content-type": "application/octet-stream"},
                                         timeout=TIMEOUT)
    assert status == 200, embedded
    return embedded


def mask_pixels(segment: dict) -> set[int]:
    """The indices (column-major, as COCO counts them) of a segment's mask pixels."""
    pixels, position = set(), 0
    for i, run in enumerate(decode_counts(segment["mask"]["counts"])):
        if i % 2:
            pixels.update(range(position, position + run))
        position += run
    return pixels


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
    status, headers, blob = served.request("POST", "/v1/embedding", raw=SHAPES,
                                           headers={"content-type": "image/png"}, timeout=TIMEOUT)
    assert status == 200 and headers["content-type"] == "application/octet-stream", blob
    assert blob.startswith(b"SAM-EMB1")
    (length,) = struct.unpack_from("<I", blob, 8)
    header = json.loads(blob[12:12 + length])
    assert header["embedding_id"] == hashlib.sha256(SHAPES).hexdigest()
    assert header["original_size"] == [HEIGHT, WIDTH] and header["dtype"] == "<f2"
    assert 2 * MiB < len(blob) < 2 * MiB + 512  # fp16: 2 MiB and a small header
    prompt = {"points": [RECTANGLE_CENTRE]}
    stateless_prompt = {**prompt, "embedding": base64.b64encode(blob).decode()}
    # Base64 in JSON, the prompt included: inside what one Lambda invocation may carry.
    assert len(json.dumps(stateless_prompt)) < LAMBDA_MAX_PAYLOAD_BYTES
    status, stateless = post(served, "segment", stateless_prompt)
    assert status == 200, stateless
    assert stateless["embedding_id"] == header["embedding_id"]
    status, cached = post(served, "segment", {**prompt, "embedding_id": header["embedding_id"]})
    assert stateless["segments"] == cached["segments"]


def test_fp16_embeddings_give_the_fp32_masks_within_the_documented_tolerance(
        served: ServedModel, exact: ServedModel) -> None:
    prompts = [{"points": [RECTANGLE_CENTRE]}, {"box": {"x0": 180, "y0": 60, "x1": 300, "y1": 180}},
               {"points": [{"x": 240, "y": 120}, {"x": 20, "y": 20, "label": 0}]}]
    image = base64.b64encode(SHAPES).decode()
    for prompt in prompts:
        answers = []
        for server in (served, exact):
            status, answer = post(server, "segment", {"image": image, **prompt, "multimask": False})
            assert status == 200, answer
            answers.append(answer["segments"][0])
        half, full = answers
        half_pixels, full_pixels = mask_pixels(half), mask_pixels(full)
        iou = len(half_pixels & full_pixels) / max(1, len(half_pixels | full_pixels))
        print(f"fp16 vs fp32, {prompt}: IoU {iou:.4f}, score {half['score']:.4f} vs {full['score']:.4f}")
        assert iou >= FP16_MIN_IOU and abs(half["score"] - full["score"]) <= FP16_MAX_SCORE_DIFFERENCE


def test_the_cache_is_bounded_in_bytes_and_evicts_the_least_recently_used(exact: ServedModel) -> None:
    evictions = metric(exact, "ml_shared_cache_evictions_total")
    first, second, third = (embed(exact, image)["embedding_id"] for image in (SHAPES, SCENE, SCENE_JPEG))
    # 10 MiB holds two fp32 embeddings (4 MiB each): the third pushed out the least recently used.
    assert metric(exact, "ml_shared_cache_evictions_total") > evictions
    assert metric(exact, "ml_shared_cache_bytes") <= metric(exact, "ml_shared_cache_max_bytes") == 10 * MiB
    status, answer = post(exact, "segment", {"embedding_id": first, "points": [RECTANGLE_CENTRE]})
    assert status == 409 and "/v1/embed" in answer["detail"], answer
    for kept in (second, third):
        assert post(exact, "segment", {"embedding_id": kept, "points": [{"x": 10, "y": 10}]})[0] == 200


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


def test_openapi_lists_the_stages_with_examples_that_work(served: ServedModel) -> None:
    _, _, spec = served.request("GET", "/openapi.json")
    examples = {}
    for endpoint in ("embed", "segment", "predict", "embedding"):
        operation = spec["paths"][f"/v1/{endpoint}"]["post"]
        examples[endpoint] = operation["requestBody"]["content"]["application/json"]["example"]
    assert "409" in spec["paths"]["/v1/segment"]["post"]["responses"]
    assert "application/octet-stream" in spec["paths"]["/v1/embedding"]["post"]["responses"]["200"]["content"]
    assert "random" in spec["info"]["description"]
    # The examples are real requests: embedding the example image makes the segment example work.
    for endpoint in ("embed", "segment", "predict"):
        status, answer = post(served, endpoint, examples[endpoint])
        assert status == 200, (endpoint, answer)
