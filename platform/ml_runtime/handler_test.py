from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from typing import AsyncIterator, Iterator
from textwrap import dedent

import pytest

from ml_runtime.codec import InputError
from ml_runtime.handler import HandlerError, LoadedModel, discover_endpoints


@dataclass
class Query:
    text: str


class Counter:
    def load(self) -> None:
        self.calls = 0

    def predict(self, queries: list[Query], upper: bool = False) -> list[str]:
        self.calls += 1  # state kept between requests
        return [q.text.upper() if upper else q.text for q in queries]

    def count(self) -> int:
        return self.calls

    def _private(self) -> None: ...


@pytest.fixture
def counter_module(tmp_path, monkeypatch):
    (tmp_path / "counter_model.py").write_text(
        dedent(
            """\
            from ml_runtime.handler_test import Counter as Model

            class NoEndpoints:
                def _helper(self) -> int:
                    return 1

            not_a_class = 1
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "counter_model"
    sys.modules.pop("counter_model", None)


def test_endpoints_exclude_lifecycle_and_private_methods() -> None:
    endpoints = discover_endpoints(Counter())
    assert sorted(endpoints) == ["count", "predict"]
    assert endpoints["predict"].parameters["upper"][1] is True  # has a default


def test_loaded_model_calls_load_once_and_keeps_state(counter_module: str) -> None:
    model = LoadedModel(f"{counter_module}:Model")
    assert model.call("predict", {"queries": [{"text": "a"}], "upper": True}) == ["A"]
    assert model.call("predict", {"queries": []}) == []
    assert model.call("count", {}) == 2


def test_bad_payloads(counter_module: str) -> None:
    model = LoadedModel(f"{counter_module}:Model")
    with pytest.raises(InputError, match="queries: required field is missing"):
        model.call("predict", {})
    with pytest.raises(InputError, match="nope: unknown field"):
        model.call("predict", {"queries": [], "nope": 1})
    with pytest.raises(InputError, match="expected a JSON object"):
        model.call("predict", [1])
    with pytest.raises(HandlerError, match="no endpoint 'missing'; the model has: count, predict"):
        model.call("missing", {})


@pytest.mark.parametrize(
    "spec, message",
    [
        ("counter_model:Nope", "has no class 'Nope'"),
        ("counter_model:not_a_class", "is not a class"),
        ("counter_model:NoEndpoints", "has no endpoints"),
        ("counter_model", "must look like `module:Class`"),
    ],
)
def test_handler_errors(counter_module: str, spec: str, message: str) -> None:
    with pytest.raises(HandlerError, match=message):
        LoadedModel(spec)


# ---------------------------------------------------------------------------------------------
# Batchable endpoints


class Batched:
    batched_endpoints = {"shout": {"max_batch_size": 4}}

    def load(self) -> None:
        self.calls: list[int] = []

    def shout(self, requests: list[Query]) -> list[str]:
        self.calls.append(len(requests))
        if any(q.text == "refuse" for q in requests):
            raise ValueError("refused")
        return [q.text.upper() for q in requests]

    def predict(self, x: int) -> int:
        return x


def test_a_batchable_endpoint_takes_the_fields_of_one_request() -> None:
    endpoint = discover_endpoints(Batched())["shout"]
    assert endpoint.parameters == {"text": (str, False)} and endpoint.returns is str
    assert endpoint.batch is not None and endpoint.batch.max_batch_size == 4 and endpoint.batch.max_wait_ms == 5.0
    assert discover_endpoints(Batched())["predict"].batch is None


def test_one_model_call_answers_a_batch_and_bad_requests_fail_alone() -> None:
    model = Batched()
    model.load()
    endpoint = discover_endpoints(model)["shout"]
    assert endpoint.call_batch([{"text": "a"}, {"text": "b"}]) == ["A", "B"] and model.calls == [2]
    model.calls.clear()
    outcomes = endpoint.call_batch([{"text": "a"}, {"txt": "b"}, {"text": "refuse"}, {"text": "c"}])
    assert outcomes[0] == "A" and outcomes[3] == "C"
    assert isinstance(outcomes[1], InputError) and outcomes[1].path == "txt"
    assert isinstance(outcomes[2], ValueError) and str(outcomes[2]) == "refused"
    assert model.calls == [3, 1, 1, 1]  # the batch, then each request alone
    assert endpoint.call({"text": "one"}) == "ONE"


@pytest.mark.parametrize("declared, error", [
    ({"nope": {}}, r"names \['nope'\], which are not endpoint methods"),
    ({"shout": {"max_batch": 4}}, r"must be a dict with any of"),
    ({"shout": {"max_batch_size": 0}}, r"max_batch_size must be a whole number >= 1"),
    ({"predict": {}}, r"batchable endpoint predict\(\) must take one parameter annotated `list\[Item\]`"),
])
def test_a_bad_batch_declaration_is_refused(declared: dict, error: str) -> None:
    model = Batched()
    model.batched_endpoints = declared  # type: ignore[assignment]
    with pytest.raises(HandlerError, match=error):
        discover_endpoints(model)


def test_a_batchable_endpoint_must_answer_every_request() -> None:
    class Short(Batched):
        def shout(self, requests: list[Query]) -> list[str]:
            return ["only one"]

    model = Short()
    endpoint = discover_endpoints(model)["shout"]
    outcomes = endpoint.call_batch([{"text": "a"}, {"text": "b"}])
    # The batch fails its check; alone, each request gets the one result.
    assert outcomes == ["only one", "only one"]
    with pytest.raises(TypeError, match="returned 1 results for 2 requests"):
        endpoint._call_items([Query("a"), Query("b")])


class WithExamples(Counter):
    endpoint_examples = {"predict": {"queries": [{"text": "hello"}], "upper": True}}

    def blob(self, size: int) -> bytes:
        return bytes(size)


def test_examples_are_checked_and_kept_with_their_endpoint() -> None:
    endpoints = discover_endpoints(WithExamples())
    assert endpoints["predict"].example == WithExamples.endpoint_examples["predict"]
    assert endpoints["count"].example is None


@pytest.mark.parametrize("examples, error", [
    ({"nope": {}}, r"names \['nope'\], which are not endpoint methods"),
    ({"predict": {"queries": [{"txt": "a"}]}}, r"\['predict'\] is not a valid request of predict\(\) at 'queries\[0\].txt': unknown field"),
    ({"predict": {}}, r"at 'queries': required field is missing"),
    (["predict"], r"must map endpoint names to one request's JSON body each"),
])
def test_an_example_that_does_not_fit_its_endpoint_fails_the_load(examples, error: str) -> None:
    model = WithExamples()
    model.endpoint_examples = examples  # type: ignore[assignment]
    with pytest.raises(HandlerError, match=error):
        discover_endpoints(model)


def test_an_endpoint_annotated_bytes_answers_raw_bytes() -> None:
    endpoints = discover_endpoints(WithExamples())
    assert endpoints["blob"].binary_response and not endpoints["predict"].binary_response
    assert endpoints["blob"].call({"size": 3}) == b"\0\0\0"


class Streams:
    def __init__(self) -> None:
        self.closed: list[int] = []

    def predict(self, text: str) -> str:
        return text

    def words(self, text: str) -> Iterator[Query]:
        try:
            for i, word in enumerate(text.split()):
                yield Query(word)
        finally:
            self.closed.append(i)

    async def letters(self, text: str) -> AsyncIterator[str]:
        for letter in text:
            await asyncio.sleep(0)
            yield letter


def test_a_generator_endpoint_streams_its_encoded_items_and_closing_it_closes_the_model() -> None:
    model = Streams()
    endpoints = discover_endpoints(model)
    words = endpoints["words"]
    assert words.streaming and words.returns is Query and not endpoints["predict"].streaming
    items = words.stream({"text": "one two three"})
    assert next(items) == {"text": "one"}
    items.close()
    assert model.closed == [0]  # the model's generator ran its `finally` at once
    assert words.call({"text": "a b"}) == [{"text": "a"}, {"text": "b"}]
    with pytest.raises(InputError):
        words.stream({"txt": "x"})  # refused before any item


def test_an_async_generator_endpoint_streams_too() -> None:
    letters = discover_endpoints(Streams())["letters"]
    assert letters.streaming and letters.returns is str
    assert list(letters.stream({"text": "abc"})) == ["a", "b", "c"]


def test_a_generator_endpoint_must_say_what_it_yields_and_cannot_be_batched() -> None:
    class Unannotated(Streams):
        def words(self, text: str) -> list:  # type: ignore[override]
            yield text

    with pytest.raises(HandlerError, match=r"annotate what it yields, e.g. `-> Iterator\[Token\]`"):
        discover_endpoints(Unannotated())

    class Batched(Streams):
        batched_endpoints = {"words": {}}

    with pytest.raises(HandlerError, match=r"is a generator \(it streams\): it cannot be batched too"):
        discover_endpoints(Batched())
