"""OpenAPI 3.1 document for one model: every route the server answers, with its request body,
every status code it can return and the error body.

The document is also the server's route table: `ModelApp` answers exactly the paths and methods
listed here (404 for any other path, 405 with `Allow` for any other method), so the two cannot
disagree. The Open Inference Protocol schemas follow the KServe / Triton v2 REST specification.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import fastjsonschema

from ml_serving import generation, streams
from ml_runtime.errors import INVALID_REQUEST, MALFORMED_JSON, MODEL_REJECTED_INPUT, NOT_CACHED, UPSTREAM_FAILED

SCHEMAS = "#/components/schemas/"
# The server's own schemas have dotted names, which no Python class (a handler's types) can have.
OIP = SCHEMAS + "oip."
ERROR_REF = SCHEMAS + "ml.Error"

# What the HTTP layer answers before a request reaches any route (ml_serving.http), so every
# operation can return them.
TRANSPORT_ERRORS = {
    "400": "Malformed HTTP request",
    "408": "The request was not received in time",
    "413": "The request body is larger than the server's limit",
    "414": "The request target (URL) is longer than the server's limit",
    "431": "The request's header fields are larger than the server's limit",
}
# What a route that runs the model can answer besides 200.
MODEL_ERRORS = {
    "400": f"Malformed JSON (`error`: \"{MALFORMED_JSON}\")",
    "409": f"The request names state the server no longer holds (`error`: \"{NOT_CACHED}\"), e.g. an "
           "evicted cache entry; `detail` says what to send instead",
    "415": "Unsupported content type",
    "422": f"The request does not match the schema (`error`: \"{INVALID_REQUEST}\", `field` names "
           f"where), or the model rejected a value the schema allows (`error`: \"{MODEL_REJECTED_INPUT}\")",
    "500": "The model raised, or produced a result JSON cannot carry (NaN or Infinity); the "
           "traceback is in the server log under the request id",
    "502": f"A service the model calls gave a bad answer (`error`: \"{UPSTREAM_FAILED}\", `upstream_status`)",
    "503": "The server is at capacity or shutting down, or the worker died, or a service the model calls "
           "is overloaded or unreachable; retry later",
    "504": "The model (or a service it calls) did not answer within its timeout",
}

ERROR = {
    "type": "object",
    "description": "Every error response: what went wrong, and where when the request was at fault.",
    "properties": {
        "error": {"type": "string", "description": "What went wrong."},
        "detail": {"type": "string", "description": "More about it, e.g. the parser's or the model's message."},
        "field": {"type": "string", "description": "Path of the offending request field, e.g. `flowers[0].petal_width`."},
        "request_id": {"type": "string", "description": "The request's id, as in the `x-request-id` header and the log."},
        "routes": {"type": "array", "items": {"type": "string"}, "description": "The routes there are (404)."},
        "upstream_status": {"type": ["integer", "null"],
                            "description": "The status a service the model calls answered with (502, 503)."},
    },
    "required": ["error"],
}

_PARAMETERS = {
    "type": "object",
    "description": "Extra parameters (Open Inference Protocol).",
    "additionalProperties": {"type": ["string", "number", "boolean"]},
}
DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BYTES"]
# A request's input and a response's output tensor have the same shape in the protocol.
_TENSOR = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"enum": DATATYPES},
        "parameters": {"$ref": OIP + "InferenceParameters"},
        "data": {"$ref": OIP + "TensorData"},
    },
    "required": ["name", "shape", "datatype", "data"],
}
OIP_SCHEMAS: dict[str, Any] = {
    "oip.InferenceParameters": _PARAMETERS,
    "oip.TensorData": {
        "type": "array",
        "description": "Tensor elements in row-major order, flat or nested.",
        "items": {"anyOf": [{"type": ["number", "string", "boolean"]}, {"$ref": OIP + "TensorData"}]},
    },
    "oip.RequestInput": _TENSOR,
    "oip.RequestOutput": {
        "type": "object",
        "properties": {"name": {"type": "string"}, "parameters": {"$ref": OIP + "InferenceParameters"}},
        "required": ["name"],
    },
    "oip.InferenceRequest": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "parameters": {"$ref": OIP + "InferenceParameters"},
            "inputs": {"type": "array", "items": {"$ref": OIP + "RequestInput"}},
            "outputs": {"type": "array", "items": {"$ref": OIP + "RequestOutput"}},
        },
        "required": ["inputs"],
    },
    "oip.ResponseOutput": _TENSOR,
    "oip.InferenceResponse": {
        "type": "object",
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "parameters": {"$ref": OIP + "InferenceParameters"},
            "outputs": {"type": "array", "items": {"$ref": OIP + "ResponseOutput"}},
        },
        "required": ["model_name", "outputs"],
    },
    "oip.TensorMetadata": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "datatype": {"enum": DATATYPES},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": -1}},
        },
        "required": ["name", "datatype", "shape"],
    },
    "oip.ModelMetadata": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string"},
            "inputs": {"type": "array", "items": {"$ref": OIP + "TensorMetadata"}},
            "outputs": {"type": "array", "items": {"$ref": OIP + "TensorMetadata"}},
        },
        "required": ["name", "platform", "inputs", "outputs"],
    },
    "oip.ServerMetadata": {
        "type": "object",
        "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                       "extensions": {"type": "array", "items": {"type": "string"}}},
        "required": ["name", "version", "extensions"],
    },
    "oip.GenerateRequest": {
        "type": "object",
        "description": "Generate extension: the text to continue, and sampling parameters at the top level "
                       "or under `parameters` (max_tokens, temperature, top_p, stop, seed).",
        "properties": {
            "id": {"type": "string"},
            "text_input": {"type": "string"},
            "parameters": {"type": "object"},
            "max_tokens": {"type": "integer", "minimum": 1},
            "temperature": {"type": "number", "minimum": 0},
            "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
            "stop": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
            "seed": {"type": "integer"},
        },
        "required": ["text_input"],
    },
    "oip.GenerateResponse": {
        "type": "object",
        "properties": {
            "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
            "text_output": {"type": "string"}, "finish_reason": {"enum": ["stop", "length"]},
            "prompt_tokens": {"type": "integer"}, "completion_tokens": {"type": "integer"},
            "total_tokens": {"type": "integer"},
        },
        "required": ["model_name", "text_output"],
    },
    "oip.Liveness": {"type": "object", "properties": {"live": {"type": "boolean"}}, "required": ["live"]},
    "oip.Readiness": {"type": "object", "properties": {"ready": {"type": "boolean"}}, "required": ["ready"]},
}

_HEADERS = {
    "x-request-id": {"description": "The request's id: the client's `x-request-id` if it sent a valid one, "
                                    "else a generated one.", "schema": {"type": "string"}},
}
_RETRY_AFTER = {"retry-after": {"description": "Seconds to wait before retrying.", "schema": {"type": "string"}}}


def _response(description: str, schema: Optional[dict[str, Any]] = None, media_type: str = "application/json",
              headers: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "headers": {**_HEADERS, **(headers or {})}}
    out["content"] = {media_type: {"schema": schema if schema is not None else {"$ref": ERROR_REF}}}
    return out


def _errors(statuses: dict[str, str]) -> dict[str, Any]:
    out = {code: {"description": text, "content": {"application/json": {"schema": {"$ref": ERROR_REF}}}}
           for code, text in TRANSPORT_ERRORS.items()}  # no x-request-id: no route has seen them
    for code, text in statuses.items():
        out[code] = _response(text, headers=_RETRY_AFTER if code == "503" else None)
    return dict(sorted(out.items()))


def _get(summary: str, responses: dict[str, Any]) -> dict[str, Any]:
    return {"get": {"summary": summary, "responses": {**responses, **_errors({})}}}


def _ready(summary: str) -> dict[str, Any]:
    return _get(summary, {
        "200": _response("Ready", {"$ref": OIP + "Readiness"}),
        "503": _response("Not ready (e.g. no worker has loaded the model yet)", {"$ref": OIP + "Readiness"}),
    })


# Raw request bodies that fill an endpoint's one bytes parameter (in JSON it is base64): images
# are sent as they are, with their own type.
BINARY_CONTENT_TYPES = ("application/octet-stream", "image/png", "image/jpeg")
DOCS_PATH = "/docs"  # the page for people (ml_serving/docs.html)
# What an endpoint annotated `-> bytes` answers with.
BINARY_RESPONSE_TYPE = "application/octet-stream"


def sse_events(data: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The schema of one Server-Sent Event, as an event stream's `schema` describes it (OpenAPI
    3.2's reading, which validators apply to 3.1 too): its fields, `data` being JSON of the
    schema `data` when given (OpenAI's `data: [DONE]` is not JSON, so its streams give none)."""
    data_field: dict[str, Any] = {"type": "string"}
    if data is not None:
        data_field.update(contentMediaType="application/json", contentSchema=data)
    return {"type": "object", "required": ["data"], "properties": {
        "event": {"type": "string"}, "data": data_field, "id": {"type": "string"}, "retry": {"type": "integer"}}}


# A stream's last event when it fails after its first item (ml_serving.streams.error).
STREAM_ERROR = {"allOf": [{"$ref": ERROR_REF}, {"type": "object", "required": ["status"],
                                                 "properties": {"status": {"type": "integer"}}}]}


def _ok(spec: dict[str, Any]) -> dict[str, Any]:
    """An endpoint's 200: JSON, raw bytes (`-> bytes`), or a stream of items (a generator)."""
    if spec.get("streaming"):
        ok = _response("A stream of items as they are made: newline-delimited JSON, or Server-Sent "
                       "Events for `Accept: text/event-stream`; a failure after the first item is "
                       "its last event", spec["response"], streams.CONTENT_TYPES[streams.NDJSON])
        ok["content"][streams.CONTENT_TYPES[streams.SSE]] = {
            "schema": sse_events({"anyOf": [spec["response"], STREAM_ERROR]})}
        return ok
    if spec.get("binary_response"):
        return _response("OK", {"type": "string", "format": "binary"}, BINARY_RESPONSE_TYPE)
    return _response("OK", spec["response"])


def build_openapi(manifest: dict[str, Any], description: Optional[dict[str, Any]]) -> dict[str, Any]:
    """The document; `description` is what a worker reported after loading the model (None
    until then: the health and metadata routes already answer)."""
    name, version = manifest["name"], manifest["version"]
    endpoints = (description or {}).get("endpoints", {})
    paths: dict[str, Any] = {}
    for endpoint, spec in sorted(endpoints.items()):
        content: dict[str, Any] = {"application/json": {"schema": spec["request"]}}
        if spec.get("example") is not None:
            content["application/json"]["example"] = spec["example"]
        if spec["binary_parameter"]:
            for content_type in BINARY_CONTENT_TYPES:
                content[content_type] = {"schema": {"type": "string", "format": "binary"}}
        operation = {
            "operationId": endpoint,
            "summary": spec["doc"].splitlines()[0] if spec["doc"] else endpoint,
            # An empty body is an empty object: required only when some parameter is.
            "requestBody": {"required": bool(spec["request"].get("required")), "content": content},
            "responses": {"200": _ok(spec), **_errors(MODEL_ERRORS)},
        }
        if spec.get("batch"):
            # One request, one answer; the server gathers concurrent ones into one model call.
            operation["x-ml-batch"] = spec["batch"]
        paths[f"/v{version}/{endpoint}"] = {"post": operation}
    model = f"/v2/models/{name}"
    versioned = f"{model}/versions/{version}"
    paths["/v2/health/live"] = _get("Liveness (Open Inference Protocol)",
                                    {"200": _response("Live", {"$ref": OIP + "Liveness"})})
    paths["/v2/health/ready"] = _ready("Readiness (Open Inference Protocol)")
    paths["/v2"] = _get("Server metadata (Open Inference Protocol)",
                        {"200": _response("OK", {"$ref": OIP + "ServerMetadata"})})
    for prefix in (model, versioned):
        paths[prefix] = _get("Model metadata (Open Inference Protocol)",
                             {"200": _response("OK", {"$ref": OIP + "ModelMetadata"})})
        paths[f"{prefix}/ready"] = _ready("Model readiness (Open Inference Protocol)")
        if "predict" in endpoints:
            paths[f"{prefix}/infer"] = {"post": {
                "operationId": "infer" if prefix == model else "infer_version",
                "summary": "Inference (Open Inference Protocol): tensors map onto predict's parameters",
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": {"$ref": OIP + "InferenceRequest"}}}},
                "responses": {
                    "200": _response("OK", {"$ref": OIP + "InferenceResponse"}),
                    **_errors({**MODEL_ERRORS, "400": "Malformed JSON, or a request that is not an "
                               "inference request or whose tensors do not fit predict's parameters"}),
                },
            }}
        if generation.supported(description):
            paths.update(_generate_paths(prefix, prefix == model))
    paths["/metrics"] = _get("Prometheus metrics", {"200": _response("OK", {"type": "string"}, "text/plain")})
    paths["/openapi.json"] = _get("This document", {"200": _response("OK", {"type": "object"})})
    paths[DOCS_PATH] = _get("A page to try every endpoint in a browser, built from this document",
                            {"200": _response("OK", {"type": "string"}, "text/html")})
    schemas = {**(description or {}).get("definitions", {}), **OIP_SCHEMAS, "ml.Error": ERROR}
    return {
        "openapi": "3.1.0",
        "info": {"title": f"{name} model API", "version": str(version),
                 "description": manifest.get("description") or f"Generated API of {manifest['address']}."},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def _generate_paths(prefix: str, latest: bool) -> dict[str, Any]:
    """The generate extension's routes of a model that generates text."""
    def operation(name: str, summary: str, ok: dict[str, Any]) -> dict[str, Any]:
        return {"post": {
            "operationId": name if latest else f"{name}_version", "summary": summary,
            "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": OIP + "GenerateRequest"}}}},
            "responses": {"200": ok, **_errors(MODEL_ERRORS)},
        }}
    return {
        f"{prefix}/generate": operation("generate_text", "Generate text (Open Inference Protocol generate extension)",
                                        _response("OK", {"$ref": OIP + "GenerateResponse"})),
        f"{prefix}/generate_stream": operation(
            "generate_text_stream", "Generate text as Server-Sent Events (generate extension)",
            _response("Server-Sent Events, each a GenerateResponse with the new `text_output`; the last "
                      "has `finish_reason`", sse_events({"anyOf": [{"$ref": OIP + "GenerateResponse"}, STREAM_ERROR]}),
                      streams.CONTENT_TYPES[streams.SSE])),
    }


def compile_schema(schema: dict[str, Any], definitions: dict[str, Any]) -> Callable[[Any], Any]:
    """A fast validator for `schema`, whose `$ref`s point into `definitions`."""
    return fastjsonschema.compile({**schema, "components": {"schemas": definitions}})


def schema_error(validator: Callable[[Any], Any], payload: Any) -> Optional[dict[str, Any]]:
    """The error body for a payload that `validator` (compiled by fastjsonschema) rejects."""
    try:
        validator(payload)
    except fastjsonschema.JsonSchemaValueException as e:
        # fastjsonschema names the root `data`: "data.flowers[0].x must be number".
        field = e.name[len("data."):] if e.name.startswith("data.") else "<body>"
        detail = e.message[len("data."):] if e.message.startswith("data.") else e.message
        return {"error": INVALID_REQUEST, "field": field, "detail": detail}
    except RecursionError:  # validators recurse with the document
        return {"error": INVALID_REQUEST, "field": "<body>", "detail": "the document is nested too deeply"}
    return None
