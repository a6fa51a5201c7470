"""What a client can send cannot make the server answer 5xx, hang or crash: each hostile input
gets a 4xx with a JSON error body naming what was wrong, and the next request is served.

Real server, real worker (the probe model), raw sockets on 127.0.0.1 where http.client would
refuse to send the request.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Iterator

import pytest

from integration.served_model import ServedModel

PACKAGE = Path("tests.models.probe/probe")
ITEMS = {"items": [{"name": "a", "size": 1}]}
READ_TIMEOUT, IDLE_TIMEOUT = 1.0, 2.0


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[ServedModel]:
    served = ServedModel(PACKAGE, tmp_path_factory.mktemp("probe"), "--workers", "1",
                         "--max-body-bytes", "200000", "--read-timeout", str(READ_TIMEOUT),
                         "--idle-timeout", str(IDLE_TIMEOUT))
    try:
        yield served
    finally:
        assert served.stop() == 0


def still_serving(server: ServedModel) -> None:
    status, _, body = server.request("POST", "/v1/predict", ITEMS)
    assert status == 200, body


def connect(server: ServedModel) -> socket.socket:
    sock = socket.create_connection((server.host, server.port), timeout=10)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], dict]:
    """The one response the server sends before closing the connection."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(body)


def exchange(server: ServedModel, data: bytes, chunk_size: int = 0) -> tuple[int, dict[str, str], dict]:
    with connect(server) as sock:
        if chunk_size:
            for i in range(0, len(data), chunk_size):
                sock.sendall(data[i:i + chunk_size])
                time.sleep(0.001)
        else:
            sock.sendall(data)
        return read_response(sock)


def post(path: str, body: bytes, content_type: str = "application/json", length: int = -1) -> bytes:
    length = len(body) if length < 0 else length
    return (f"POST {path} HTTP/1.1\r\nhost: test\r\ncontent-type: {content_type}\r\n"
            f"content-length: {length}\r\nconnection: close\r\n\r\n").encode() + body


@pytest.mark.parametrize(
    "body, status, fragment",
    [
        (b"[" * 100_000, 400, "nested too deeply"),
        (b'{"items": [{"name": "a", "size": 1e400}]}', 400, "out of range"),
        (b'{"items": [{"name": "a", "size": ' + b"9" * 5000 + b"}]}", 400, "digits"),
        (b'{"items": [{"name": "a", "size": NaN}]}', 400, "NaN is not a JSON number"),
        (b'{"items": [{"name": "\xff\xfe", "size": 1}]}', 400, "not UTF-8"),
        (b'{"items": [], "items": [{"name": "a", "size": 1}]}', 400, "'items' more than once"),
        (b'{"items": [{"name": "a", "size": 1, "tags": [1]}]}', 422, "items[0].tags"),
        (b'{"items": [{"name": ["a"], "size": 1}]}', 422, "items[0].name"),
        (b"[]", 422, "must be object"),
        (b"", 422, "must contain ['items'] properties"),
        (b"   ", 400, "Expecting value"),
        (b'{"items": [', 400, "malformed JSON"),
    ],
)
def test_hostile_bodies_are_a_4xx_naming_the_problem(server: ServedModel, body: bytes, status: int,
                                                     fragment: str) -> None:
    got, headers, error = exchange(server, post("/v1/predict", body))
    assert got == status, error
    assert headers["content-type"] == "application/json"
    assert fragment in json.dumps(error), error
    still_serving(server)


@pytest.mark.parametrize(
    "body, content_type, status, fragment",
    [
        (b'{"inputs": "x"}', "application/json", 400, "inputs must be array"),
        (b'{"inputs": [{"name": "items", "shape": [-1], "datatype": "FP32", "data": []}]}',
         "application/json", 400, "shape[0] must be bigger than or equal to 0"),
        (b'{"inputs": [{"name": "items", "shape": [2], "datatype": "FP32", "data": [1]}]}',
         "application/json", 400, "needs 2 values"),
        (b'{"inputs": [{"name": "items", "shape": [1], "datatype": "FP32", "data": [Infinity]}]}',
         "application/json", 400, "Infinity is not a JSON number"),
        (b"inputs", "text/plain", 415, "unsupported content type"),
    ],
)
def test_hostile_inference_requests(server: ServedModel, body: bytes, content_type: str, status: int,
                                    fragment: str) -> None:
    got, _, error = exchange(server, post("/v2/models/probe/infer", body, content_type))
    assert got == status, error
    assert fragment in json.dumps(error), error
    still_serving(server)


def test_a_model_rejecting_its_input_is_a_422_with_its_message(server: ServedModel) -> None:
    status, _, body = server.request("POST", "/v1/refuse", {"reason": "this image cannot be decoded"})
    assert status == 422
    assert body["error"] == "the model rejected the input"
    assert body["detail"] == "this image cannot be decoded" and body["request_id"]


def test_a_non_finite_result_is_a_500_saying_where_never_a_non_json_200(server: ServedModel) -> None:
    status, headers, body = server.request("POST", "/v1/nan", {})
    assert status == 500 and headers["content-type"] == "application/json"
    assert "non-finite number (NaN or Infinity) at bad" in body["error"] and body["request_id"]
    still_serving(server)


@pytest.mark.parametrize(
    "method, path, allowed",
    [("TRACE", "/metrics", "GET"), ("TRACE", "/v2/health/live", "GET"), ("GET", "/v1/predict", "POST"),
     ("DELETE", "/openapi.json", "GET"), ("PUT", "/v2/models/probe/infer", "POST"), ("HEAD", "/metrics", "GET")],
)
def test_undeclared_methods_are_405_with_allow(server: ServedModel, method: str, path: str, allowed: str) -> None:
    status, headers, body = server.request(method, path)
    assert status == 405 and headers["allow"] == allowed
    if method != "HEAD":
        assert f"use {allowed}" in body["error"]


def test_large_heads_and_targets_are_431_and_414(server: ServedModel) -> None:
    status, _, body = exchange(server, b"GET /metrics HTTP/1.1\r\nx-big: " + b"a" * 200_000 + b"\r\n\r\n")
    assert status == 431 and "header fields are larger than" in body["error"]
    status, _, body = exchange(server, b"GET /metrics?" + b"q" * 20_000 + b" HTTP/1.1\r\n\r\n")
    assert status == 414 and "request target is longer than" in body["error"]
    # Many small fields add up too.
    fields = b"".join(b"x-field-%d: %s\r\n" % (i, b"v" * 100) for i in range(200))
    status, _, body = exchange(server, b"GET /metrics HTTP/1.1\r\n" + fields + b"\r\n")
    assert status == 431
    still_serving(server)


def test_a_request_split_into_one_byte_packets_is_served(server: ServedModel) -> None:
    status, _, body = exchange(server, post("/v1/predict", json.dumps(ITEMS).encode()), chunk_size=1)
    assert status == 200 and body["items"][0]["name"] == "a"


def test_bodies_and_heads_cut_short_time_out_with_408(server: ServedModel) -> None:
    started = time.monotonic()
    status, _, body = exchange(server, post("/v1/predict", b'{"items": [', length=100))
    assert status == 408 and "not received within" in body["error"]
    assert time.monotonic() - started < READ_TIMEOUT + 5
    status, _, _ = exchange(server, b"POST /v1/predict HTTP/1.1\r\nhost: te")
    assert status == 408
    still_serving(server)


def test_many_idle_connections_neither_block_requests_nor_stay_open(server: ServedModel) -> None:
    idle = [connect(server) for _ in range(300)]
    try:
        still_serving(server)
        time.sleep(IDLE_TIMEOUT + 1)
        for sock in idle:  # closed by the server without an answer: nothing was asked
            assert sock.recv(1) == b""
        still_serving(server)
    finally:
        for sock in idle:
            sock.close()


def test_an_oversized_body_is_refused_before_it_is_sent(server: ServedModel) -> None:
    with connect(server) as sock:
        sock.sendall(post("/v1/predict", b"", length=10**9))  # announces 1 GB, sends none of it
        status, _, body = read_response(sock)
    assert status == 413 and "larger than 200000 bytes" in body["error"]
    still_serving(server)
