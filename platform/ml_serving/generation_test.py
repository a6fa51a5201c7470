"""The stop-string and usage logic of a generation, over a scripted stream of model pieces (the
real server and model: tests/integration/openai_test.py)."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Optional

import pytest

from ml_http.server import Response
from ml_serving.app import ModelApp
from ml_serving.generation import Generation, GenerationFailed, _held_back
from ml_serving.workers import WorkerResponse, WorkerTimeout


class ScriptedStream:
    """What the pool's Stream gives: each piece's JSON, then the final answer (or an error)."""

    def __init__(self, pieces: list[str], end: Any) -> None:
        self.events: list[Any] = [json.dumps({"text": p, "prompt_tokens": 5, "completion_tokens": i + 1}).encode()
                                  for i, p in enumerate(pieces)] + [end]
        self.cancelled = False
        self.read = 0

    async def next(self) -> Any:
        event = self.events[self.read]
        self.read += 1
        if isinstance(event, Exception):
            raise event
        return event


class ScriptedPool:
    def __init__(self, stream: ScriptedStream) -> None:
        self.stream = stream

    def submit_stream(self, *args: Any, **kwargs: Any) -> ScriptedStream:
        return self.stream


class ScriptedApp:
    """The parts of ModelApp a generation uses, its own stream opening included."""

    accepting = True
    pool_error = staticmethod(ModelApp.pool_error)
    open_stream = ModelApp.open_stream

    def __init__(self, stream: ScriptedStream) -> None:
        self.pool = ScriptedPool(stream)

    def validate(self, endpoint: str, payload: Any) -> Optional[dict]:
        return None

    def answer(self, endpoint: str, result: WorkerResponse, request_id: str) -> Response:
        return Response(result.status, result.body)


def run(pieces: list[str], stop: tuple[str, ...], end: Any = WorkerResponse(200, b"")) -> tuple[list[str], Generation, ScriptedStream]:
    stream = ScriptedStream(pieces, end)
    stream.cancel = lambda: setattr(stream, "cancelled", True)  # type: ignore[method-assign]
    generation = Generation(ScriptedApp(stream), {"prompt": "x"}, stop, "req", None)  # type: ignore[arg-type]

    async def collect() -> list[str]:
        assert await generation.start() is None
        return [piece async for piece in generation.pieces()]

    return asyncio.run(collect()), generation, stream


def test_without_stop_strings_every_piece_passes_as_it_comes() -> None:
    pieces, generation, stream = run(["Hel", "lo", " there"], ())
    assert pieces == ["Hel", "lo", " there"]
    assert generation.usage.to_json() == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    assert not stream.cancelled


def test_a_stop_string_split_across_pieces_ends_the_text_before_it_and_the_model() -> None:
    pieces, generation, stream = run(["one ", "two EN", "D three", " four"], ("END",))
    assert "".join(pieces) == "one two "
    assert "EN" not in "".join(pieces)  # held back while it could have begun "END"
    assert generation.finish_reason == "stop" and stream.cancelled
    assert stream.read == 3  # " four" was never asked for


def test_text_held_back_for_a_stop_string_that_never_comes_is_sent_at_the_end() -> None:
    pieces, generation, stream = run(["a <", "|"], ("<|end|>",))
    assert pieces == ["a ", "<|"] and not stream.cancelled


def test_the_earliest_of_several_stop_strings_wins() -> None:
    pieces, _, _ = run(["x. y\n z"], ("\n", "."))
    assert pieces == ["x"]


def test_an_error_after_the_first_piece_is_raised_with_its_response() -> None:
    stream_error = WorkerResponse(422, json.dumps({"error": "model rejected input"}).encode())
    with pytest.raises(GenerationFailed) as failed:
        run(["a"], (), end=stream_error)
    assert failed.value.response.status == 422
    with pytest.raises(GenerationFailed) as failed:
        run(["a"], (), end=WorkerTimeout(2.0))
    assert failed.value.response.status == 504


@pytest.mark.parametrize("text, stops, held", [
    ("abc", ("cd",), 1), ("abc", ("bcd",), 2), ("abc", ("x",), 0), ("abc", ("abcd",), 3), ("", ("a",), 0),
])
def test_held_back_is_the_longest_ending_that_begins_a_stop_string(text: str, stops: tuple, held: int) -> None:
    assert _held_back(text, stops) == held
