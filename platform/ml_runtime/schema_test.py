from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal, Optional, TypedDict

from ml_runtime.handler import discover_endpoints
from ml_runtime.schema import BASE64_PATTERN, describe_endpoints, schema_for


class Mode(enum.Enum):
    FAST = "fast"


@dataclass
class Point:
    """A point."""

    x: float
    y: float = 0.0


class Options(TypedDict, total=False):
    mode: Mode


class Model:
    def predict(self, points: list[Point], options: Optional[Options] = None) -> list[float]:
        """Distance from the origin."""
        return []

    def segment(self, image: bytes, kind: Literal["mask", "box"] = "mask") -> dict[str, int]:
        return {}


def test_schemas_of_basic_and_named_types() -> None:
    definitions: dict = {}
    assert schema_for(list[int], definitions) == {"type": "array", "items": {"type": "integer"}}
    assert schema_for(dict[str, float], definitions) == {
        "type": "object", "additionalProperties": {"type": "number"}}
    assert schema_for(bytes, definitions) == {"type": "string", "contentEncoding": "base64",
                                              "pattern": BASE64_PATTERN}
    assert schema_for(Point, definitions) == {"$ref": "#/components/schemas/Point"}
    point = definitions["Point"]
    assert point["required"] == ["x"] and point["additionalProperties"] is False
    assert point["description"] == "A point."
    assert schema_for(Optional[int], definitions) == {"anyOf": [{"type": "integer"}, {"type": "null"}]}


def test_describe_endpoints() -> None:
    described = describe_endpoints(discover_endpoints(Model()))
    predict = described["endpoints"]["predict"]
    assert predict["request"]["required"] == ["points"]
    assert predict["response"] == {"type": "array", "items": {"type": "number"}}
    assert predict["doc"] == "Distance from the origin."
    assert predict["binary_parameter"] is None
    # A method whose one required parameter is bytes can take a raw octet-stream body.
    assert described["endpoints"]["segment"]["binary_parameter"] == "image"
    assert set(described["definitions"]) == {"Point", "Options", "Mode"}
    assert described["definitions"]["Mode"]["enum"] == ["fast"]
