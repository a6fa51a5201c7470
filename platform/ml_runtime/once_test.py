from __future__ import annotations

import io
import json
import sys

import pytest

from ml_runtime import once

MODEL = {"name": "echo", "address": "models/echo:echo", "version": 1, "handler": "echo_model:Model"}


@pytest.fixture(autouse=True)
def echo_module(tmp_path, monkeypatch):
    (tmp_path / "echo_model.py").write_text(
        "class Model:\n"
        "    def predict(self, value: int) -> dict:\n"
        "        if value < 0:\n"
        "            raise RuntimeError('negative')\n"
        "        if value == 7:\n"
        "            raise ValueError('seven is not served')\n"
        "        if value == 9:\n"
        "            return {'double': float('nan')}\n"
        "        return {'double': value * 2}\n"
        "\n"
        "    def raw(self, size: int) -> bytes:\n"
        "        return bytes(range(size))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("echo_model", None)


def test_reads_file_and_prints_json(tmp_path, capsys) -> None:
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"value": 21}))
    assert once.main(MODEL, [str(request)]) == 0
    assert json.loads(capsys.readouterr().out) == {"double": 42}


def test_reads_stdin(monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO('{"value": 1}'))
    assert once.main(MODEL, []) == 0
    assert json.loads(capsys.readouterr().out) == {"double": 2}


@pytest.mark.parametrize(
    "body, code, message",
    [
        ("{not json", once.EXIT_BAD_INPUT, "cannot read a JSON request"),
        ('{"value": "x"}', once.EXIT_BAD_INPUT, "invalid request: value: expected an integer"),
        ('{"value": -1}', once.EXIT_MODEL_ERROR, "models/echo:echo raised an exception"),
        ('{"value": 1, "value": 2}', once.EXIT_BAD_INPUT, "has the key 'value' more than once"),
        ('{"value": 7}', once.EXIT_BAD_INPUT, "the model rejected the input: seven is not served"),
        ('{"value": 9}', once.EXIT_MODEL_ERROR, "non-finite number (NaN or Infinity) at double"),
    ],
)
def test_errors(monkeypatch, capsys, body: str, code: int, message: str) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(body))
    assert once.main(MODEL, []) == code
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in captured.err


def test_missing_input_file(capsys) -> None:
    assert once.main(MODEL, ["/nonexistent/request.json"]) == once.EXIT_BAD_INPUT
    assert "cannot read a JSON request from /nonexistent/request.json" in capsys.readouterr().err


def test_a_bytes_endpoint_writes_its_bytes_as_they_are(tmp_path, capsysbinary) -> None:
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"size": 5}))
    assert once.main(MODEL, ["--endpoint", "raw", str(request)]) == 0
    assert capsysbinary.readouterr().out == bytes(range(5))
