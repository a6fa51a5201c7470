"""Open Inference Protocol (KServe / Triton "v2") routes, mapped onto the model's `predict`.

Tensors map onto `predict`'s parameters by name (or, when it has one parameter, whatever the
single input is called). A tensor whose last dimension matches an all-numeric record type
(e.g. `list[Flower]` with four float fields) becomes a list of those records, in field order.
Outputs: one tensor per field of the returned records, or one tensor `output` for a plain list.
A model that generates text (ml_runtime.generation) also has the generate extension:
`generate` and `generate_stream`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, Optional, Union

from ml_runtime.errors import TENSORS_DO_NOT_FIT
from ml_http.server import Request, Response
from ml_serving import streams
from ml_serving.generation import Generation, GenerationFailed, model_parameters
from ml_serving.openapi import OIP, OIP_SCHEMAS, compile_schema, schema_error

if TYPE_CHECKING:
    from ml_serving.app import ModelApp

NUMERIC = {"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
           "FP16", "FP32", "FP64"}


class TensorError(ValueError):
    pass


# Requests are checked against exactly the schema /openapi.json publishes for them.
_VALID_REQUEST = compile_schema({"$ref": OIP + "InferenceRequest"}, OIP_SCHEMAS)


async def route(app: "ModelApp", request: Request, path: str, request_id: str,
                timeout: Optional[float]) -> tuple[str, Response]:
    """Answer a /v2 route; the app has already checked that the path and method are served."""
    parts = path.split("/")[2:]  # after "/v2"
    if parts == ["health", "live"]:
        return "/v2/health/live", Response.json(200, {"live": True})
    if parts == ["health", "ready"]:
        return "/v2/health/ready", _ready(app)
    if parts == []:
        return "/v2", Response.json(200, {"name": "ml-platform", "version": "1",
                                          "extensions": ["generate"] if app.generates else []})
    rest = parts[2:]  # after "models/<name>"
    if rest[:1] == ["versions"]:
        rest = rest[2:]
    template = "/v2/models/{model}" + ("/" + "/".join(rest) if rest else "")
    if rest == ["ready"]:
        return template, _ready(app)
    if rest == ["infer"]:
        return template, await infer(app, request, request_id, timeout)
    if rest in (["generate"], ["generate_stream"]):
        return template, await generate(app, request, request_id, timeout, stream=rest == ["generate_stream"])
    return template, Response.json(200, metadata(app))


def _ready(app: "ModelApp") -> Response:
    return Response.json(200 if app.ready else 503, {"ready": app.ready})


@dataclass(frozen=True)
class PredictInput:
    """How a tensor fills one of predict's parameters; worked out once, when the model is
    described, not per request."""

    schema: dict[str, Any]
    record_fields: Optional[tuple[str, ...]]  # an all-numeric record type: [..., k] fills records
    datatype: str  # what the model metadata advertises

    @property
    def base64(self) -> bool:
        return self.schema.get("contentEncoding") == "base64"


def predict_inputs(description: dict[str, Any]) -> dict[str, PredictInput]:
    """predict's parameters as tensor inputs, by name, from what a worker reported."""
    predict = description["endpoints"].get("predict", {})
    definitions = description["definitions"]
    inputs = {}
    for name, schema in predict.get("request", {}).get("properties", {}).items():
        fields = _record_fields(schema, definitions)
        inputs[name] = PredictInput(schema, fields, _datatype_of_schema(schema, fields))
    return inputs


def metadata(app: "ModelApp") -> dict[str, Any]:
    inputs = [{"name": name, "datatype": i.datatype, "shape": [-1]} for name, i in app.predict_inputs.items()]
    return {"name": app.name, "versions": [str(app.version)], "platform": "ml-platform",
            "inputs": inputs, "outputs": []}


def _checked_body(app: "ModelApp", request: Request, request_id: str, validator: Any) -> Union[Response, Any]:
    """The request's JSON body, valid under the published schema `validator` checks, or the
    415 / 400 response to send."""
    body = app.read_json(request, request_id)
    if isinstance(body, Response):
        return body
    error = schema_error(validator, body)
    return body if error is None else Response.json(400, {**error, "request_id": request_id})


async def infer(app: "ModelApp", request: Request, request_id: str, timeout: Optional[float]) -> Response:
    body = _checked_body(app, request, request_id, _VALID_REQUEST)
    if isinstance(body, Response):
        return body
    try:
        payload = _inputs_to_payload(app.predict_inputs, body["inputs"])
    except TensorError as e:
        return Response.json(400, {"error": TENSORS_DO_NOT_FIT, "detail": str(e), "request_id": request_id})
    error = app.validate("predict", payload)
    if error is not None:
        return Response.json(422, {**error, "request_id": request_id})
    response = await app.invoke("predict", json.dumps(payload).encode(), request_id, timeout=timeout)
    if response.status != 200:
        return response
    outputs = _result_to_outputs(json.loads(response.body))
    requested = {o["name"] for o in body.get("outputs") or []}
    if requested:
        outputs = [o for o in outputs if o["name"] in requested]
    return Response.json(200, {"model_name": app.name, "model_version": str(app.version),
                               "id": body.get("id", request_id), "outputs": outputs})


# The generate extension's parameters that map onto the contract's (ml_runtime.generation); others
# pass on when the model's generate takes them, or are ignored.
_GENERATE_PARAMETERS = ("max_tokens", "temperature", "top_p", "seed")
_VALID_GENERATE = compile_schema({"$ref": OIP + "GenerateRequest"}, OIP_SCHEMAS)


async def generate(app: "ModelApp", request: Request, request_id: str, timeout: Optional[float],
                   stream: bool) -> Response:
    """The generate extension (KServe / Triton): `text_input` and sampling parameters, at the top
    level or under `parameters`, -> `text_output`; `generate_stream` sends Server-Sent Events of
    the text as it comes, the last one with `finish_reason`."""
    body = _checked_body(app, request, request_id, _VALID_GENERATE)
    if isinstance(body, Response):
        return body
    parameters = {**body, **(body.get("parameters") or {})}
    payload = {**model_parameters(app, parameters), "prompt": body["text_input"],
               **{k: parameters.get(k) for k in _GENERATE_PARAMETERS}}
    run = Generation(app, payload, parameters.get("stop"), request_id, timeout)
    failed = await run.start()
    if failed is not None:
        return failed
    head = {"model_name": app.name, "model_version": str(app.version), "id": body.get("id", request_id)}
    if stream:
        return Response(200, content_type=streams.CONTENT_TYPES[streams.SSE], stream=_generated_events(run, head))
    try:
        text = await run.text()
    except GenerationFailed as e:
        return e.response
    return Response.json(200, {**head, "text_output": text, **_details(run)})


def _details(run: Generation) -> dict[str, Any]:
    return {"finish_reason": run.finish_reason, **run.usage.to_json()}


async def _generated_events(run: Generation, head: dict[str, Any]) -> AsyncIterator[bytes]:
    try:
        async for piece in run.pieces():
            yield streams.item(streams.SSE, json.dumps({**head, "text_output": piece}).encode())
    except GenerationFailed as e:
        yield streams.error(streams.SSE, e.response)
        return
    yield streams.item(streams.SSE, json.dumps({**head, "text_output": "", **_details(run)}).encode())


def _inputs_to_payload(parameters: dict[str, PredictInput], inputs: list[dict[str, Any]]) -> dict[str, Any]:
    payload = {}
    for tensor in inputs:
        name = tensor.get("name")
        if name not in parameters:
            if len(parameters) == 1 and len(inputs) == 1:
                name = next(iter(parameters))
            else:
                raise TensorError(f"input {tensor.get('name')!r} matches no parameter of predict ({', '.join(parameters)})")
        payload[name] = _tensor_to_value(tensor, parameters[name])
    return payload


def _tensor_to_value(tensor: dict[str, Any], parameter: PredictInput) -> Any:
    shape, data, datatype = tensor.get("shape"), tensor.get("data"), tensor.get("datatype")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise TensorError(f"input {tensor.get('name')!r}: `shape` must be a list of non-negative integers")
    if not isinstance(data, list):
        raise TensorError(f"input {tensor.get('name')!r}: `data` must be a list")
    flat = _flatten(data)
    expected = 1
    for d in shape:
        expected *= d
    if len(flat) != expected:
        raise TensorError(f"input {tensor.get('name')!r}: shape {shape} needs {expected} values, got {len(flat)}")
    if datatype == "BYTES" and parameter.base64 and shape in ([1], []):
        return flat[0]
    value = _reshape(flat, shape) if shape else flat[0]
    record = parameter.record_fields
    if record is not None and shape and shape[-1] == len(record):
        value = _rows_to_records(value, list(record), len(shape) - 1)
    return value


def _record_fields(schema: dict[str, Any], definitions: dict[str, Any]) -> Optional[tuple[str, ...]]:
    """Field names of an all-numeric record type reached through arrays, if any."""
    while schema.get("type") == "array":
        schema = schema.get("items", {})
    ref = schema.get("$ref", "")
    if not ref:
        return None
    definition = definitions.get(ref.rsplit("/", 1)[-1], {})
    properties = definition.get("properties", {})
    if properties and all(p.get("type") in ("number", "integer") for p in properties.values()):
        return tuple(properties)
    return None


def _rows_to_records(value: Any, fields: list[str], depth: int) -> Any:
    if depth == 0:
        return dict(zip(fields, value))
    return [_rows_to_records(v, fields, depth - 1) for v in value]


def _flatten(data: list[Any]) -> list[Any]:
    out: list[Any] = []
    for item in data:
        if isinstance(item, list):
            out.extend(_flatten(item))
        else:
            out.append(item)
    return out


def _reshape(flat: list[Any], shape: list[int]) -> Any:
    if len(shape) == 1:
        return list(flat)
    step = len(flat) // shape[0] if shape[0] else 0
    return [_reshape(flat[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])]


def _result_to_outputs(result: Any) -> list[dict[str, Any]]:
    if isinstance(result, list) and result and all(isinstance(r, dict) for r in result):
        names = list(result[0])
        return [_tensor(name, [r.get(name) for r in result]) for name in names]
    if isinstance(result, dict):
        return [_tensor(name, value if isinstance(value, list) else [value]) for name, value in result.items()]
    return [_tensor("output", result if isinstance(result, list) else [result])]


def _tensor(name: str, values: list[Any]) -> dict[str, Any]:
    shape = _shape(values)
    flat = _flatten(values)
    if all(isinstance(v, bool) for v in flat):
        datatype = "BOOL"
    elif all(isinstance(v, int) and not isinstance(v, bool) for v in flat):
        datatype = "INT64"
    elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in flat):
        datatype = "FP64"
    elif all(isinstance(v, str) for v in flat):
        datatype = "BYTES"
    else:  # records, maps: one JSON document per element
        datatype, flat, shape = "BYTES", [json.dumps(v) for v in values], [len(values)]
    return {"name": name, "datatype": datatype, "shape": shape, "data": flat}


def _shape(values: Any) -> list[int]:
    shape = []
    while isinstance(values, list):
        shape.append(len(values))
        if not values or not all(isinstance(v, list) and len(v) == len(values[0]) for v in values):
            if values and any(isinstance(v, list) for v in values):
                return [len(values)]
            break
        values = values[0]
    return shape


def _datatype_of_schema(schema: dict[str, Any], record_fields: Optional[tuple[str, ...]]) -> str:
    while schema.get("type") == "array":
        schema = schema.get("items", {})
    if record_fields is not None or schema.get("type") == "number":
        return "FP64"
    if schema.get("type") == "integer":
        return "INT64"
    if schema.get("type") == "boolean":
        return "BOOL"
    return "BYTES"
