"""JSON <-> typed Python values, driven by a handler's type hints.

Handlers are plain Python with type hints (dataclasses, TypedDict, lists, dicts, basic types,
bytes); requests arrive as JSON. This module turns one into the other and reports, for bad
input, the path of the offending field so callers can answer with a precise error.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import functools
import types
import typing
from typing import Any, Optional, Union


class InputError(ValueError):
    """A request value does not match the handler's declared type."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path or '<body>'}: {message}")
        self.path = path or "<body>"
        self.message = message


def _join(path: str, key: Union[str, int]) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _is_typeddict(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, dict) and hasattr(tp, "__total__")


def _union_args(tp: Any) -> tuple[Any, ...] | None:
    origin = typing.get_origin(tp)
    if origin is Union or (hasattr(types, "UnionType") and isinstance(tp, types.UnionType)):
        return typing.get_args(tp)
    return None


def decode(value: Any, tp: Any, path: str = "") -> Any:
    """Convert a JSON-decoded value to `tp`, raising InputError naming the field path."""
    if tp is Any or tp is object or tp is typing.Any:
        return value
    union = _union_args(tp)
    if union is not None:
        if value is None and type(None) in union:
            return None
        for option in union:
            if option is type(None):
                continue
            try:
                return decode(value, option, path)
            except InputError:
                continue
        raise InputError(path, f"expected {_type_name(tp)}, got {_json_kind(value)}")
    if tp is type(None) or tp is None:
        if value is not None:
            raise InputError(path, f"expected null, got {_json_kind(value)}")
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise InputError(path, f"expected a boolean, got {_json_kind(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise InputError(path, f"expected an integer, got {_json_kind(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(path, f"expected a number, got {_json_kind(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise InputError(path, f"expected a string, got {_json_kind(value)}")
        return value
    if tp is bytes:
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        if not isinstance(value, str):
            raise InputError(path, f"expected base64 bytes (a string), got {_json_kind(value)}")
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise InputError(path, "expected base64-encoded bytes") from None
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            allowed = ", ".join(repr(m.value) for m in tp)
            raise InputError(path, f"expected one of {allowed}, got {value!r}") from None
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Literal:
        if value not in args:
            raise InputError(path, f"expected one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin in (list, tuple, set, frozenset) or tp in (list, tuple):
        if not isinstance(value, list):
            raise InputError(path, f"expected an array, got {_json_kind(value)}")
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise InputError(path, f"expected an array of {len(args)} items, got {len(value)}")
            return tuple(decode(v, a, _join(path, i)) for i, (v, a) in enumerate(zip(value, args)))
        item_tp = args[0] if args else Any
        items = [decode(v, item_tp, _join(path, i)) for i, v in enumerate(value)]
        return (origin or list)(items) if origin in (tuple, set, frozenset) else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise InputError(path, f"expected an object, got {_json_kind(value)}")
        value_tp = args[1] if len(args) == 2 else Any
        return {k: decode(v, value_tp, _join(path, k)) for k, v in value.items()}
    fields = record_fields(tp)
    if fields is not None:
        return _decode_fields(value, tp, path, fields, construct=tp if dataclasses.is_dataclass(tp) else dict)
    raise TypeError(f"unsupported type in a handler signature at {path or '<body>'}: {tp!r}")


def record_fields(tp: Any) -> Optional[dict[str, tuple[Any, bool]]]:
    """A dataclass's or TypedDict's fields, name -> (type hint, optional); None for other types."""
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _dataclass_fields(tp)
    if _is_typeddict(tp):
        hints = typing.get_type_hints(tp)
        required = getattr(tp, "__required_keys__", frozenset(hints))
        return {name: (hint, name not in required) for name, hint in hints.items()}
    return None


@functools.lru_cache(maxsize=None)
def _dataclass_fields(tp: type) -> dict[str, tuple[Any, bool]]:
    # Cached: get_type_hints costs ~8 us, paid for every record of every request otherwise.
    hints = typing.get_type_hints(tp)
    return {
        f.name: (
            hints[f.name],
            f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING,
        )
        for f in dataclasses.fields(tp)
        if f.init
    }


def _decode_fields(
    value: Any, tp: Any, path: str, fields: dict[str, tuple[Any, bool]], construct: Any
) -> Any:
    if not isinstance(value, dict):
        raise InputError(path, f"expected an object ({_type_name(tp)}), got {_json_kind(value)}")
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise InputError(_join(path, unknown[0]), "unknown field")
    decoded = {}
    for name, (hint, optional) in fields.items():
        if name in value:
            decoded[name] = decode(value[name], hint, _join(path, name))
        elif not optional:
            raise InputError(_join(path, name), "required field is missing")
    return construct(**decoded)


def encode(value: Any) -> Any:
    """Convert a handler's return value to JSON-compatible data."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, enum.Enum):
        return encode(value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [encode(v) for v in value]
    # numpy scalars and arrays, without importing numpy: it may not be in the model's env.
    if hasattr(value, "tolist"):
        return encode(value.tolist())
    if hasattr(value, "item"):
        return encode(value.item())
    raise TypeError(f"cannot encode a {type(value).__name__} as JSON")


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
