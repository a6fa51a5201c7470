from __future__ import annotations

import base64
import enum
from dataclasses import dataclass, field
from typing import Literal, Optional, TypedDict

import pytest

from ml_runtime.codec import InputError, decode, encode


@dataclass
class Box:
    x: int
    y: int
    label: str = "thing"


@dataclass
class Image:
    pixels: bytes
    boxes: list[Box] = field(default_factory=list)
    scale: Optional[float] = None


class Options(TypedDict, total=False):
    threshold: float


class Color(enum.Enum):
    RED = "red"


def test_decodes_nested_dataclasses_and_base64() -> None:
    payload = {
        "pixels": base64.b64encode(b"\x00\x01").decode(),
        "boxes": [{"x": 1, "y": 2}, {"x": 3, "y": 4, "label": "cat"}],
    }
    assert decode(payload, Image) == Image(
        pixels=b"\x00\x01", boxes=[Box(1, 2), Box(3, 4, "cat")], scale=None
    )


@pytest.mark.parametrize(
    "value, tp, path, message",
    [
        ({"pixels": "AA==", "boxes": [{"x": 1}]}, Image, "boxes[0].y", "required field is missing"),
        ({"pixels": "AA==", "boxes": [{"x": "1", "y": 2}]}, Image, "boxes[0].x", "expected an integer"),
        ({"pixels": "not base64!"}, Image, "pixels", "expected base64"),
        ({"pixels": "AA==", "extra": 1}, Image, "extra", "unknown field"),
        ([1, 2], Image, "<body>", "expected an object (Image), got an array"),
        ({"threshold": "high"}, Options, "threshold", "expected a number"),
        ("blue", Color, "<body>", "expected one of 'red'"),
        ("c", Literal["a", "b"], "<body>", "expected one of 'a', 'b'"),
        (True, int, "<body>", "expected an integer, got a boolean"),
        ({"a": [1, "x"]}, dict[str, list[int]], "a[1]", "expected an integer"),
    ],
)
def test_errors_name_the_field_path(value, tp, path: str, message: str) -> None:
    with pytest.raises(InputError) as excinfo:
        decode(value, tp)
    assert excinfo.value.path == path
    assert message in excinfo.value.message


def test_basic_types() -> None:
    assert decode(3, float) == 3.0 and isinstance(decode(3, float), float)
    assert decode(2.0, int) == 2
    assert decode(None, Optional[int]) is None
    assert decode({"threshold": 0.5}, Options) == {"threshold": 0.5}
    assert decode([1, "a"], tuple[int, str]) == (1, "a")
    assert decode("red", Color) is Color.RED


def test_encode() -> None:
    class FakeNumpyArray:
        def tolist(self):
            return [[1.0, 2.0]]

    assert encode(Box(1, 2)) == {"x": 1, "y": 2, "label": "thing"}
    assert encode(b"\x00\x01") == "AAE="
    assert encode({"a": (1, Color.RED)}) == {"a": [1, "red"]}
    assert encode(FakeNumpyArray()) == [[1.0, 2.0]]
    with pytest.raises(TypeError):
        encode(object())
