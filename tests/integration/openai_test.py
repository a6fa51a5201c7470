"""The OpenAI-compatible API and the Open Inference Protocol generate extension, end to end: a
real server process, the official `openai` client (its own resolve) with only `base_url`
changed, and raw HTTP where the exact bytes matter (the SSE lines, `data: [DONE]`).

The probe model's `generate` echoes its prompt three characters per token (exact, instant);
smollm2 is the real LLM, SmolLM2-135M-Instruct on the CPU.
"""

from __future__ import annotations

import http.client
import json
import math
import time
from pathlib import Path
from typing import Iterator

import openai
import pytest

from integration.served_model import ServedModel

PROBE = Path("tests.models.probe/probe")
SMOLLM2 = Path("models.smollm2/smollm2")
ECHO_TOKEN_CHARS = 3  # the probe's


def client(served: ServedModel, version: int = 1) -> openai.OpenAI:
    """The official client, pointed at the model's OpenAI base URL: /v<N>/openai/v1."""
    return openai.OpenAI(base_url=f"{served.url}/v{version}/openai/v1", api_key="not-needed", max_retries=0,
                         timeout=120)


def raw_sse(served: ServedModel, path: str, body: dict) -> list[str]:
    """The `data:` lines of a streamed answer, exactly as sent."""
    connection = http.client.HTTPConnection(served.host, served.port, timeout=60)
    try:
        connection.request("POST", path, body=json.dumps(body), headers={"content-type": "application/json"})
        response = connection.getresponse()
        assert response.status == 200 and response.getheader("content-type") == "text/event-stream"
        text = response.read().decode()
    finally:
        connection.close()
    assert text.endswith("\n\n")
    return [block.removeprefix("data: ") for block in text.split("\n\n") if block]


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> Iterator[ServedModel]:
    served = ServedModel(PROBE, tmp_path_factory.mktemp("probe"), "--workers", "1")
    try:
        yield served
    finally:
        served.stop()


def test_chat_completion_answers_in_openais_shape_with_usage(probe: ServedModel) -> None:
    answer = client(probe).chat.completions.create(
        model="probe", messages=[{"role": "user", "content": "hello world"}])
    expected = "user: hello world"
    assert answer.object == "chat.completion" and answer.model == "probe" and answer.id.startswith("chatcmpl-")
    (choice,) = answer.choices
    assert choice.message.role == "assistant" and choice.message.content == expected
    assert choice.finish_reason == "stop"
    tokens = math.ceil(len(expected) / ECHO_TOKEN_CHARS)
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == (
        tokens, tokens, 2 * tokens)


def test_a_streamed_chat_completion_is_chunks_then_usage_then_done(probe: ServedModel) -> None:
    chunks = list(client(probe).chat.completions.create(
        model="probe", messages=[{"role": "user", "content": "stream me"}], stream=True,
        stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "user: stream me"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == math.ceil(len(text) / ECHO_TOKEN_CHARS)
    assert len({c.id for c in chunks}) == 1 and all(c.object == "chat.completion.chunk" for c in chunks)
    # The exact lines strict clients parse: one JSON object per event, then the end marker.
    lines = raw_sse(probe, "/v1/openai/v1/chat/completions",
                    {"model": "probe", "messages": [{"role": "user", "content": "hi"}], "stream": True})
    assert lines[-1] == "[DONE]" and all(json.loads(line)["object"] == "chat.completion.chunk" for line in lines[:-1])


def test_completion_stops_before_a_stop_string_and_at_max_tokens(probe: ServedModel) -> None:
    openai_client = client(probe)
    answer = openai_client.completions.create(model="probe", prompt="alpha beta END gamma", stop=["END", "zzz"])
    assert answer.object == "text_completion"
    assert answer.choices[0].text == "alpha beta " and answer.choices[0].finish_reason == "stop"
    streamed = openai_client.completions.create(model="probe", prompt="alpha beta END gamma", stop="END", stream=True)
    assert "".join(c.choices[0].text for c in streamed) == "alpha beta "
    answer = openai_client.completions.create(model="probe", prompt="alpha beta", max_tokens=2)
    assert answer.choices[0].text == "alpha " and answer.choices[0].finish_reason == "length"
    assert answer.usage.completion_tokens == 2


def test_a_stop_string_stops_the_generation_in_the_worker(probe: ServedModel) -> None:
    # 40 tokens 0.5 s apart, had the generation gone on; the probe has one worker.
    prompt = "go END" + "x" * 40 * ECHO_TOKEN_CHARS
    started = time.monotonic()
    answer = client(probe).completions.create(model="probe", prompt=prompt, stop="END", extra_body={"delay": 0.5})
    assert answer.choices[0].text == "go "
    assert probe.request("POST", "/v1/sleep", {"seconds": 0})[0] == 200
    assert time.monotonic() - started < 5


def test_models_lists_this_model(probe: ServedModel) -> None:
    assert [m.id for m in client(probe).models.list()] == ["probe"]


def test_errors_are_openais_exceptions(probe: ServedModel) -> None:
    openai_client = client(probe)
    with pytest.raises(openai.NotFoundError) as not_found:
        openai_client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert not_found.value.code == "model_not_found" and "probe" in not_found.value.message
    with pytest.raises(openai.BadRequestError) as bad:
        openai_client.chat.completions.create(model="probe", messages=[{"role": "user", "content": "hi"}], n=2)
    assert "n" in bad.value.message
    # A failure after the first chunk is the stream's last event, which the client raises.
    chunks = []
    with pytest.raises(openai.APIError) as failed:
        for chunk in openai_client.completions.create(model="probe", prompt="some text FAIL", stream=True):
            chunks.append(chunk)
    assert chunks and "FAIL" in failed.value.message


def test_the_open_inference_protocol_generate_extension(probe: ServedModel) -> None:
    status, _, body = probe.request("POST", "/v2/models/probe/generate",
                                    {"text_input": "one two three", "parameters": {"max_tokens": 3}})
    assert status == 200, body
    assert (body["model_name"], body["text_output"], body["finish_reason"]) == ("probe", "one two t", "length")
    status, _, body = probe.request("POST", "/v2/models/probe/versions/1/generate",
                                    {"text_input": "one two", "stop": " "})
    assert status == 200 and body["text_output"] == "one" and body["finish_reason"] == "stop"
    events = [json.loads(line) for line in raw_sse(probe, "/v2/models/probe/generate_stream", {"text_input": "abcdefg"})]
    assert [e["text_output"] for e in events] == ["abc", "def", "g", ""] and events[-1]["finish_reason"] == "stop"
    status, _, body = probe.request("GET", "/v2")
    assert status == 200 and body["extensions"] == ["generate"]
    status, _, body = probe.request("POST", "/v2/models/probe/generate", {"parameters": {}})
    assert status == 400 and body["field"] == "<body>"


def test_the_openai_routes_are_in_the_openapi_document(probe: ServedModel) -> None:
    _, _, document = probe.request("GET", "/openapi.json")
    paths = document["paths"]
    for route in ("/v1/openai/v1/chat/completions", "/v1/openai/v1/completions"):
        assert "post" in paths[route]
    assert "get" in paths["/v1/openai/v1/models"] and "post" in paths["/v2/models/probe/generate_stream"]


# ---------------------------------------------------------------------------------------------
# smollm2: the real model


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory) -> Iterator[ServedModel]:
    served = ServedModel(SMOLLM2, tmp_path_factory.mktemp("smollm2"), "--threads", "1", start_timeout=180)
    try:
        yield served
    finally:
        served.stop()


QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_smollm2_answers_a_question_through_the_openai_client(smollm2: ServedModel) -> None:
    answer = client(smollm2).chat.completions.create(model="smollm2", messages=QUESTION, temperature=0, max_tokens=30)
    assert "Paris" in answer.choices[0].message.content, answer
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage.prompt_tokens > 10 and 0 < answer.usage.completion_tokens <= 30


def test_smollm2_streams_the_same_tokens_it_answers_whole(smollm2: ServedModel) -> None:
    openai_client = client(smollm2)
    whole = openai_client.chat.completions.create(model="smollm2", messages=QUESTION, temperature=0, max_tokens=30)
    started = time.monotonic()
    arrivals, text = [], ""
    for chunk in openai_client.chat.completions.create(model="smollm2", messages=QUESTION, temperature=0,
                                                       max_tokens=30, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic() - started)
            text += chunk.choices[0].delta.content
    assert text == whole.choices[0].message.content
    assert len(arrivals) >= 3 and arrivals[0] < arrivals[-1]  # token by token, not all at the end


def test_smollm2_samples_repeatably_with_a_seed_and_stops_at_max_tokens(smollm2: ServedModel) -> None:
    openai_client = client(smollm2)

    def sample(seed: int) -> str:
        answer = openai_client.completions.create(model="smollm2", prompt="Once upon a time", max_tokens=12,
                                                  temperature=0.9, seed=seed)
        assert answer.choices[0].finish_reason == "length" and answer.usage.completion_tokens == 12
        return answer.choices[0].text

    first = sample(7)
    assert sample(7) == first
    assert len({first, sample(8), sample(9)}) > 1


def test_smollm2_streams_through_the_generate_extension(smollm2: ServedModel) -> None:
    events = [json.loads(line) for line in raw_sse(smollm2, "/v2/models/smollm2/generate_stream",
                                                   {"text_input": "The sky is", "max_tokens": 5, "temperature": 0})]
    assert len(events) >= 2 and events[-1]["finish_reason"] == "length" and events[-1]["completion_tokens"] == 5
    assert "".join(e["text_output"] for e in events).strip()
