from __future__ import annotations

import json

import pytest

from ml_runtime import wire


@pytest.mark.parametrize(
    "data, message",
    [
        (b'{"a": NaN}', "NaN is not a JSON number"),
        (b"[Infinity]", "Infinity is not a JSON number"),
        (b"[-Infinity]", "-Infinity is not a JSON number"),
        (b"[1e400]", "out of range"),
        (b"[-1e400]", "out of range"),
        (b"[" + b"9" * 400 + b"]", "has 400 digits"),
        (b"[" + b"9" * 5000 + b"]", "has 5000 digits"),
        (b'{"a": 1, "b": {"c": 1, "c": 2}}', "the key 'c' more than once"),
        (b"[" * 100_000, "nested too deeply"),
        (b'{"a": "\xff"}', "not UTF-8: byte 7"),
        (b'{"a": 1} {"b": 2}', "Extra data"),
        (b'{"a": ', "Expecting value"),
        (b"", "Expecting value"),
    ],
)
def test_rejects_what_other_parsers_reject(data: bytes, message: str) -> None:
    with pytest.raises(wire.MalformedJSON, match=message):
        wire.loads(data)


def test_reads_what_rfc_8259_allows() -> None:
    document = {"a": [1, -2.5, 1.7976931348623157e308, "é\u2028", None, True], "b": {}}
    assert wire.loads(json.dumps(document).encode()) == document
    assert wire.loads(" \n[1] \t") == [1]


def test_dumps_names_where_a_result_is_not_finite() -> None:
    assert wire.dumps({"a": [1.5, 2]}) == b'{"a":[1.5,2]}'
    for value, path in [({"p": [0.1, {"q": float("nan")}]}, "p[1].q"), (float("-inf"), "<result>"),
                        ([float("inf")], "[0]")]:
        with pytest.raises(wire.NonFiniteNumber) as raised:
            wire.dumps(value)
        assert raised.value.path == path
        assert "raise ValueError" in str(raised.value)
