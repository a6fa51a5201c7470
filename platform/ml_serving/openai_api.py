"""The OpenAI-compatible API of a model that generates text (ml_runtime.generation), mounted in the
model's own namespace so that it never collides with the model's endpoints (`/v<N>/<endpoint>`)
or the Open Inference Protocol (`/v2/...`):

    base URL  http://<model>.ml.<domain>/v<N>/openai/v1   (OPENAI_PREFIX; what clients take)
    POST      <base>/chat/completions    messages through the model's chat template
    POST      <base>/completions         a raw prompt
    GET       <base>/models              the one model this server serves (id: its name)

Requests: `model` (the model's name), `messages` / `prompt`, `max_tokens` (or
`max_completion_tokens`), `temperature`, `top_p`, `stop` (a string or up to four), `seed`, `n`
(1 only), `stream`, `stream_options.include_usage`; a field that is a parameter of the model's own
`generate` (an OpenAI client's `extra_body`) is passed on; other fields are ignored. Answers and stream chunks have OpenAI's
exact shapes, usage counts included; a stream is Server-Sent Events ending in `data: [DONE]`.
Errors have OpenAI's shape, `{"error": {"message", "type", "param", "code"}}` (`code`: the
server's own error kind, e.g. "the model rejected the input"), so that the official clients
raise their own exception types; an error after the first chunk is a last
`data: {"error": ...}` event, which the official client raises too.
"""

from __future__ import annotations

import copy
import json
import time
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Optional

from ml_http.server import Request, Response
from ml_runtime.generation import DEFAULT_MAX_TOKENS
from ml_serving.generation import Generation, GenerationFailed, model_parameters
from ml_serving.openapi import (
    MODEL_ERRORS, SCHEMAS, _errors, _get, _response, compile_schema, schema_error, sse_events,
)
from ml_serving.streams import CONTENT_TYPES, SSE

if TYPE_CHECKING:
    from ml_serving.app import ModelApp

OPENAI = SCHEMAS + "openai."
MAX_STOP_STRINGS = 4  # as OpenAI's API
DONE = b"data: [DONE]\n\n"


def prefix(version: int) -> str:
    """Where the OpenAI API's `/v1` paths are mounted: clients take this as their base URL."""
    return f"/v{version}/openai/v1"


_STOP = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": MAX_STOP_STRINGS},
                   {"type": "null"}],
         "description": f"Where to stop: the text ends before the first of these (up to {MAX_STOP_STRINGS})."}
_SAMPLING = {
    "model": {"type": "string", "description": "The model's name (GET <base>/models lists it)."},
    "max_tokens": {"type": ["integer", "null"], "minimum": 1,
                   "description": f"Most tokens to generate (default {DEFAULT_MAX_TOKENS})."},
    "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 2,
                    "description": "0 is greedy (deterministic); higher is more random (default 1)."},
    "top_p": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1,
              "description": "Sample from the smallest set of tokens whose probability reaches this."},
    "stop": _STOP,
    "seed": {"type": ["integer", "null"], "description": "Makes sampling repeatable."},
    "n": {"type": ["integer", "null"], "minimum": 1, "maximum": 1, "description": "Choices to make: 1 only."},
    "stream": {"type": ["boolean", "null"], "description": "Stream Server-Sent Events, ending in `data: [DONE]`."},
    "stream_options": {"type": ["object", "null"], "properties": {"include_usage": {"type": "boolean"}}},
}
_CONTENT_PART = {"type": "object", "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
                 "required": ["type", "text"]}
SCHEMAS_OPENAI: dict[str, Any] = {
    "openai.ChatMessage": {
        "type": "object",
        "properties": {
            "role": {"enum": ["system", "developer", "user", "assistant"]},
            "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": _CONTENT_PART}]},
        },
        "required": ["role", "content"],
    },
    "openai.ChatCompletionRequest": {
        "type": "object",
        "properties": {"messages": {"type": "array", "items": {"$ref": OPENAI + "ChatMessage"}, "minItems": 1},
                       "max_completion_tokens": {"type": ["integer", "null"], "minimum": 1}, **_SAMPLING},
        "required": ["model", "messages"],
    },
    "openai.CompletionRequest": {
        "type": "object",
        "properties": {"prompt": {"anyOf": [{"type": "string"},
                                            {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 1}],
                                  "description": "The text to continue (one string)."},
                       "echo": {"const": False}, **_SAMPLING},
        "required": ["model", "prompt"],
    },
    "openai.Usage": {
        "type": "object",
        "properties": {k: {"type": "integer"} for k in ("prompt_tokens", "completion_tokens", "total_tokens")},
    },
    "openai.ChatCompletion": {"type": "object", "description": "object: chat.completion", "properties": {
        "id": {"type": "string"}, "object": {"const": "chat.completion"}, "created": {"type": "integer"},
        "model": {"type": "string"}, "usage": {"$ref": OPENAI + "Usage"},
        "choices": {"type": "array", "items": {"type": "object", "properties": {
            "index": {"type": "integer"}, "finish_reason": {"enum": ["stop", "length"]},
            "message": {"type": "object", "properties": {"role": {"const": "assistant"}, "content": {"type": "string"}}}}}}}},
    "openai.Completion": {"type": "object", "description": "object: text_completion", "properties": {
        "id": {"type": "string"}, "object": {"const": "text_completion"}, "created": {"type": "integer"},
        "model": {"type": "string"}, "usage": {"$ref": OPENAI + "Usage"},
        "choices": {"type": "array", "items": {"type": "object", "properties": {
            "index": {"type": "integer"}, "text": {"type": "string"}, "finish_reason": {"enum": ["stop", "length"]}}}}}},
    "openai.ModelList": {"type": "object", "properties": {
        "object": {"const": "list"},
        "data": {"type": "array", "items": {"type": "object", "properties": {
            "id": {"type": "string"}, "object": {"const": "model"}, "created": {"type": "integer"},
            "owned_by": {"type": "string"}}}}}},
    "openai.Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {
        "message": {"type": "string"}, "type": {"type": "string"}, "param": {"type": ["string", "null"]},
        "code": {"type": ["string", "null"]}}}}},
}
_VALID = {kind: compile_schema({"$ref": OPENAI + kind}, SCHEMAS_OPENAI)
          for kind in ("ChatCompletionRequest", "CompletionRequest")}


def describe(document: dict[str, Any], version: int, name: str) -> None:
    """Add the OpenAI routes and their schemas to the model's OpenAPI document (which is the
    server's route table). The document says which `model` this server serves (another is a
    404, as OpenAI answers), so that clients and the fuzzer send it."""
    document["paths"].update(_paths(prefix(version)))
    schemas = copy.deepcopy(SCHEMAS_OPENAI)
    for request in ("ChatCompletionRequest", "CompletionRequest"):
        schemas["openai." + request]["properties"]["model"]["enum"] = [name]
    document["components"]["schemas"].update(schemas)


def _paths(base: str) -> dict[str, Any]:
    errors = {code: {**spec, "content": {"application/json": {"schema": {"$ref": OPENAI + "Error"}}}}
              for code, spec in _errors({**MODEL_ERRORS, "400": "Malformed JSON, or a request OpenAI's API "
                                         "would refuse", "404": "`model` is not this model"}).items()}

    def operation(name: str, request: str, answer: str, summary: str) -> dict[str, Any]:
        ok = _response("The answer; with `stream`, Server-Sent Events of its chunks, ending in "
                       "`data: [DONE]`", {"$ref": OPENAI + answer})
        ok["content"][CONTENT_TYPES[SSE]] = {"schema": sse_events()}
        return {"post": {"operationId": name, "summary": summary, "tags": ["OpenAI-compatible"],
                         "requestBody": {"required": True, "content": {
                             "application/json": {"schema": {"$ref": OPENAI + request}}}},
                         "responses": {"200": ok, **errors}}}

    return {
        f"{base}/chat/completions": operation("openai_chat_completions", "ChatCompletionRequest", "ChatCompletion",
                                              "OpenAI-compatible chat completion (the model's chat template)"),
        f"{base}/completions": operation("openai_completions", "CompletionRequest", "Completion",
                                         "OpenAI-compatible completion of a raw prompt"),
        f"{base}/models": _get("OpenAI-compatible model list: this model",
                               {"200": _response("OK", {"$ref": OPENAI + "ModelList"})}),
    }


async def route(app: "ModelApp", request: Request, path: str, request_id: str,
                timeout: Optional[float]) -> tuple[str, Response]:
    """Answer an OpenAI route; the app has already checked that the path and method are served."""
    route_name = path[len(prefix(app.version)):]
    if route_name == "/models":
        return path, Response.json(200, {"object": "list", "data": [
            {"id": app.name, "object": "model", "created": 0, "owned_by": "ml-platform"}]})
    chat = route_name == "/chat/completions"
    body = app.read_json(request, request_id)
    if isinstance(body, Response):
        return path, _openai_error(body)
    error = schema_error(_VALID["ChatCompletionRequest" if chat else "CompletionRequest"], body)
    if error is not None:
        return path, _error(400, error["detail"], "invalid_request_error", error["field"])
    if body["model"] != app.name:
        return path, _error(404, f"The model `{body['model']}` does not exist: this server serves `{app.name}`",
                            "invalid_request_error", "model", "model_not_found")
    payload = {
        **model_parameters(app, body),
        "max_tokens": body.get("max_completion_tokens") or body.get("max_tokens"),  # None: the model's default
        "temperature": body.get("temperature"), "top_p": body.get("top_p"), "seed": body.get("seed"),
    }
    if chat:
        payload["messages"] = [{"role": "system" if m["role"] == "developer" else m["role"],
                                "content": _text(m["content"])} for m in body["messages"]]
    else:
        payload["prompt"] = body["prompt"] if isinstance(body["prompt"], str) else body["prompt"][0]
    generation = Generation(app, payload, body.get("stop"), request_id, timeout)
    failed = await generation.start()
    if failed is not None:
        return path, _openai_error(failed)
    answer = _Answer(app.name, request_id, chat)
    if body.get("stream"):
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return path, Response(200, content_type=CONTENT_TYPES[SSE],
                              stream=_events(generation, answer, include_usage))
    try:
        text = await generation.text()
    except GenerationFailed as e:
        return path, _openai_error(e.response)
    return path, Response.json(200, answer.whole(text, generation))


class _Answer:
    """The shapes of one answer: whole, or as stream chunks (all sharing one id and time)."""

    def __init__(self, model: str, request_id: str, chat: bool) -> None:
        self.model = model
        self.chat = chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + request_id
        self.created = int(time.time())

    def _envelope(self, chunk: bool) -> dict[str, Any]:
        kind = "chat.completion" + (".chunk" if chunk else "") if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def whole(self, text: str, generation: Generation) -> dict[str, Any]:
        content = {"message": {"role": "assistant", "content": text}} if self.chat else {"text": text}
        return {**self._envelope(False),
                "choices": [{"index": 0, **content, "logprobs": None, "finish_reason": generation.finish_reason}],
                "usage": generation.usage.to_json()}

    def chunk(self, text: Optional[str], finish_reason: Optional[str] = None, first: bool = False) -> dict[str, Any]:
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
            if text:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        return {**self._envelope(True), "choices": [choice]}


async def _events(generation: Generation, answer: _Answer, include_usage: bool) -> AsyncIterator[bytes]:
    usage_field: Callable[[dict[str, Any]], dict[str, Any]] = (
        (lambda chunk: {**chunk, "usage": None}) if include_usage else (lambda chunk: chunk))
    if answer.chat:  # OpenAI's first chat chunk names the role
        yield _event(usage_field(answer.chunk(None, first=True)))
    try:
        async for piece in generation.pieces():
            yield _event(usage_field(answer.chunk(piece)))
    except GenerationFailed as e:
        yield _event(json.loads(_openai_error(e.response).body))
        return
    yield _event(usage_field(answer.chunk(None, generation.finish_reason)))
    if include_usage:
        yield _event({**answer.chunk(None), "choices": [], "usage": generation.usage.to_json()})
    yield DONE


def _event(data: dict[str, Any]) -> bytes:
    return b"data: %b\n\n" % json.dumps(data, separators=(",", ":")).encode()


def _text(content: Any) -> str:
    """A message's content: a string, or OpenAI's list of text parts."""
    return content if isinstance(content, str) else "".join(part["text"] for part in content)


def _error(status: int, message: str, kind: str, param: Optional[str] = None, code: Optional[str] = None) -> Response:
    return Response.json(status, {"error": {"message": message, "type": kind, "param": param, "code": code}})


def _openai_error(response: Response) -> Response:
    """One of the server's own error responses in OpenAI's error shape, its status kept."""
    try:
        body = json.loads(response.body)
    except ValueError:
        body = {"error": response.body.decode(errors="replace")}
    message = str(body.get("error", "error"))
    if body.get("detail"):
        message += f": {body['detail']}"
    if body.get("request_id"):
        message += f" (request {body['request_id']})"
    kind = "invalid_request_error" if response.status < 500 else "server_error"
    # `code`: the server's own error kind (ml_runtime.errors), which clients can act on.
    out = _error(response.status, message, kind, body.get("field"), str(body.get("error", response.status)))
    out.headers = response.headers
    return out
