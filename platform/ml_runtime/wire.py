"""JSON as it crosses the wire: strict RFC 8259 in, strict RFC 8259 out.

Python's `json` module accepts and emits things other languages' parsers reject: `NaN` and
`Infinity`, numbers that overflow a double, and objects with repeated keys (the last silently
wins). A model API must not, because its clients are written in JavaScript, Go or Java. Every
request body (in the server and in the worker) is read with `loads` and every result written
with `dumps`, so the server, the worker, `once` and the Lambda path follow one rule.
Standard library only: both the serving and every model environment import it.
"""

from __future__ import annotations

import json
import math
from typing import Any, Union

_MAX_FLOAT = 1.7976931348623157e308


class MalformedJSON(ValueError):
    """The bytes are not one strict JSON document; the message says what is wrong."""


class NonFiniteNumber(ValueError):
    """A value to send holds NaN or an infinity, which JSON cannot represent."""

    def __init__(self, path: str) -> None:
        super().__init__(
            f"the result holds a non-finite number (NaN or Infinity) at {path}, which JSON cannot "
            "represent; if such inputs are outside what the model can answer, raise ValueError "
            "for them (the client gets a 422)"
        )
        self.path = path


def _reject_constant(name: str) -> Any:
    raise MalformedJSON(f"{name} is not a JSON number (RFC 8259)")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise MalformedJSON(f"the number {text[:40]} is out of range (a double holds at most ±{_MAX_FLOAT:g})")
    return value


def _bounded_int(text: str) -> int:
    # Beyond a double's range no other client could read the number as a number either.
    if len(text.lstrip("-")) > 309:
        raise MalformedJSON(f"the integer {text[:20]}... has {len(text)} digits; at most 309 are accepted")
    return int(text)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):  # rare: only then find which key it was
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise MalformedJSON(f"the object has the key {key!r} more than once")
            seen.add(key)
    return obj


_DECODER = json.JSONDecoder(
    parse_float=_finite_float,
    parse_int=_bounded_int,
    parse_constant=_reject_constant,
    object_pairs_hook=_unique_keys,
)


def loads(data: Union[bytes, str]) -> Any:
    """One strict JSON document, or MalformedJSON saying what is wrong with it."""
    try:
        text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
    except UnicodeDecodeError as e:
        raise MalformedJSON(f"the body is not UTF-8: byte {e.start} ({data[e.start:e.start + 1]!r})") from None
    try:
        return _DECODER.decode(text)
    except MalformedJSON:
        raise
    except RecursionError:
        raise MalformedJSON("the document is nested too deeply") from None
    except ValueError as e:  # json.JSONDecodeError: the message names the position
        raise MalformedJSON(str(e)) from None


def dumps(value: Any) -> bytes:
    """Compact JSON bytes; NonFiniteNumber, naming where, if `value` holds NaN or an infinity."""
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
    except ValueError:
        path = _non_finite_path(value, "")
        if path is None:
            raise
        raise NonFiniteNumber(path) from None


def _non_finite_path(value: Any, path: str) -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return path or "<result>"
    if isinstance(value, dict):
        for key, item in value.items():
            found = _non_finite_path(item, f"{path}.{key}" if path else str(key))
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = _non_finite_path(item, f"{path}[{index}]")
            if found:
                return found
    return None
