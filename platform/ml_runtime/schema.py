"""JSON Schema (the OpenAPI 3.1 dialect) from a handler's type hints."""

from __future__ import annotations

import dataclasses
import enum
import typing
from typing import Any

from ml_runtime.codec import _dataclass_fields, _is_typeddict, _union_args
from ml_runtime.handler import Endpoint


# Standard base64 (RFC 4648, section 4) with padding: what the codec decodes.
BASE64_PATTERN = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"


def schema_for(tp: Any, definitions: dict[str, Any]) -> dict[str, Any]:
    """Schema of `tp`; named types (dataclasses, TypedDicts, enums) go into `definitions`."""
    if tp is Any or tp is object:
        return {}
    union = _union_args(tp)
    if union is not None:
        options = [schema_for(option, definitions) for option in union]
        return options[0] if len(options) == 1 else {"anyOf": options}
    if tp is type(None) or tp is None:
        return {"type": "null"}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer"}
    if tp is float:
        return {"type": "number"}
    if tp is str:
        return {"type": "string"}
    if tp is bytes:
        # contentEncoding only annotates (JSON Schema 2020-12); the pattern is what validates.
        return {"type": "string", "contentEncoding": "base64", "pattern": BASE64_PATTERN}
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin in (list, set, frozenset) or tp in (list, set):
        return {"type": "array", "items": schema_for(args[0], definitions) if args else {}}
    if origin is tuple or tp is tuple:
        if args and not (len(args) == 2 and args[1] is Ellipsis):
            items = [schema_for(a, definitions) for a in args]
            return {"type": "array", "prefixItems": items, "minItems": len(items), "maxItems": len(items)}
        return {"type": "array", "items": schema_for(args[0], definitions) if args else {}}
    if origin is dict or tp is dict:
        return {
            "type": "object",
            "additionalProperties": schema_for(args[1], definitions) if len(args) == 2 else {},
        }
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _named(tp, definitions, lambda: {"enum": [m.value for m in tp]})
    if dataclasses.is_dataclass(tp):
        return _named(tp, definitions, lambda: _object_schema(_dataclass_fields(tp), definitions))
    if _is_typeddict(tp):
        hints = typing.get_type_hints(tp)
        required = getattr(tp, "__required_keys__", frozenset(hints))
        fields = {name: (hint, name not in required) for name, hint in hints.items()}
        return _named(tp, definitions, lambda: _object_schema(fields, definitions))
    raise TypeError(f"cannot describe {tp!r} in JSON Schema")


def _named(tp: type, definitions: dict[str, Any], build) -> dict[str, Any]:
    name = tp.__name__
    if name not in definitions:
        definitions[name] = {}  # placeholder: recursive types refer to themselves
        definitions[name] = {"title": name, **build()}
        if tp.__doc__ and not tp.__doc__.startswith(f"{name}("):
            definitions[name]["description"] = tp.__doc__.strip()
    return {"$ref": f"#/components/schemas/{name}"}


def _object_schema(fields: dict[str, tuple[Any, bool]], definitions: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {name: schema_for(hint, definitions) for name, (hint, _) in fields.items()},
        "required": [name for name, (_, optional) in fields.items() if not optional],
        "additionalProperties": False,
    }


def describe_endpoints(endpoints: dict[str, Endpoint]) -> dict[str, Any]:
    """Request and response schemas of every endpoint, plus the shared definitions."""
    definitions: dict[str, Any] = {}
    described = {}
    for name, endpoint in sorted(endpoints.items()):
        request = _object_schema(endpoint.parameters, definitions)
        binary_parameter = _single_bytes_parameter(endpoint)
        described[name] = {
            "request": request,
            "response": schema_for(endpoint.returns, definitions),
            "binary_parameter": binary_parameter,
            "binary_response": endpoint.binary_response,
            "streaming": endpoint.streaming,  # `response` is then one item's schema
            "example": endpoint.example,
            "doc": (endpoint.method.__doc__ or "").strip(),
            "batch": endpoint.batch.to_json() if endpoint.batch else None,
        }
    return {"endpoints": described, "definitions": definitions}


def _single_bytes_parameter(endpoint: Endpoint) -> str | None:
    """The parameter a raw application/octet-stream body fills, if the endpoint has one."""
    required = [name for name, (_, has_default) in endpoint.parameters.items() if not has_default]
    candidates = [n for n, (hint, _) in endpoint.parameters.items() if hint is bytes]
    if len(candidates) == 1 and set(required) <= set(candidates):
        return candidates[0]
    return None
