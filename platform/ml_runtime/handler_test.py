from __future__ import annotations

import sys
from dataclasses import dataclass
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

            class NoPredict:
                def other(self) -> int:
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
        ("counter_model:NoPredict", "has no `predict` method"),
        ("counter_model", "must look like `module:Class`"),
    ],
)
def test_handler_errors(counter_module: str, spec: str, message: str) -> None:
    with pytest.raises(HandlerError, match=message):
        LoadedModel(spec)
