"""doc_links, packaged and served for real: the real all-MiniLM-L6-v2 weights, real HTTP.

The semantics are real: questions written unlike any page's words rank the page that answers
them first. Concurrent questions are answered by batched model calls, each with its own answer.
"""

from __future__ import annotations

import concurrent.futures
import json
import math
from pathlib import Path
from typing import Iterator

import pytest

from integration.served_model import ServedModel

PACKAGE = Path("models.doc_links/doc_links")
# A packed PEX's first start unpacks its wheels (torch: ~1 GB) into PEX_ROOT; later starts of
# the same package skip that. Then torch and transformers take ~10 s to import.
START_TIMEOUT = 300
DOCS = "https://docs.ml.example.com"

# Each question and the page that answers it, none sharing its wording with that page's title.
KNOWN = {
    "How can I go back to the previous version after a bad release?": "/deploy/rollback",
    "My model needs a GPU, which compute should I use?": "/deploy/gpu",
    "What does a 422 response mean?": "/api/errors",
    "Two of my models need different numpy versions": "/models/lockfiles",
    "Where do I put my API key so it does not end up in the image?": "/operate/secrets",
    "Which URL should the load balancer use to check the service is healthy?": "/operate/health",
    "Can I see request latency in Prometheus?": "/operate/metrics",
    "The upload is rejected because the file is too big": "/api/limits",
    "How do I add a new scikit-learn model to the repo?": "/models/add",
    "Does it work with Triton's client?": "/api/oip",
    "Only rebuild what my commit changed": "/ci",
}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedModel]:
    served = ServedModel(PACKAGE, tmp_path_factory.mktemp("doc_links"), start_timeout=START_TIMEOUT)
    try:
        yield served
    finally:
        served.stop()


def suggest(served: ServedModel, question: str, k: int = 3) -> list:
    status, _, body = served.request("POST", "/v1/predict", {"question": question, "k": k})
    assert status == 200, body
    return body


@pytest.mark.parametrize("question, page", sorted(KNOWN.items()))
def test_the_page_that_answers_a_question_ranks_first(served: ServedModel, question: str, page: str) -> None:
    links = suggest(served, question)
    assert links[0]["url"] == DOCS + page, links
    assert len(links) == 3 and links[0]["score"] >= links[1]["score"] >= links[2]["score"]


def test_a_harder_question_still_finds_its_page_among_the_first_three(served: ServedModel) -> None:
    urls = [link["url"] for link in suggest(served, "How do I serve a model as a serverless function?")]
    assert DOCS + "/deploy/lambda" in urls


def test_embeddings_are_unit_vectors_whose_closeness_is_meaning(served: ServedModel) -> None:
    texts = ["How do I roll back a deployment?", "Undo the last release", "Bananas are yellow"]
    status, _, body = served.request("POST", "/v1/embed", {"texts": texts})
    assert status == 200 and body["dimensions"] == 384
    rollback, undo, bananas = body["embeddings"]
    assert all(math.isclose(sum(x * x for x in v), 1.0, abs_tol=1e-4) for v in body["embeddings"])
    cosine = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731
    assert cosine(rollback, undo) > cosine(rollback, bananas) + 0.2


def test_concurrent_questions_share_model_calls_and_keep_their_own_answers(served: ServedModel) -> None:
    questions = sorted(KNOWN)
    with concurrent.futures.ThreadPoolExecutor(len(questions)) as pool:
        answers = list(pool.map(lambda q: served.request("POST", "/v1/predict", {"question": q},
                                                          {"x-request-id": str(abs(hash(q)))}), questions))
    for question, (status, headers, links) in zip(questions, answers):
        assert status == 200 and links[0]["url"] == DOCS + KNOWN[question]
        assert headers["x-request-id"] == str(abs(hash(question)))
    _, _, metrics = served.request("GET", "/metrics")
    counts = {line.split("{")[0]: float(line.rsplit(" ", 1)[1]) for line in metrics.decode().splitlines()
              if line.startswith(("ml_batch_calls_total", "ml_batched_requests_total"))}
    assert counts["ml_batched_requests_total"] > counts["ml_batch_calls_total"]  # some calls answered several


@pytest.mark.parametrize("body, detail", [
    ({"question": "   "}, "question is empty"),
    ({"question": "anything", "k": 0}, "k is 0; it must be 1 to 24"),
    ({"question": "x" * 2001}, "at most 2000"),
])
def test_questions_the_model_cannot_answer_are_422(served: ServedModel, body: dict, detail: str) -> None:
    status, _, answer = served.request("POST", "/v1/predict", body)
    assert status == 422 and detail in answer["detail"], answer


def test_openapi_describes_one_request_and_says_it_is_batched(served: ServedModel) -> None:
    _, _, spec = served.request("GET", "/openapi.json")
    operation = spec["paths"]["/v1/predict"]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert set(schema["properties"]) == {"question", "k"} and schema["required"] == ["question"]
    assert operation["x-ml-batch"] == {"max_batch_size": 32, "max_wait_ms": 5}
    assert json.dumps(spec).count("all-MiniLM") >= 1  # the ml_model's description
