"""Calls to an upstream service over real HTTP on 127.0.0.1: each way it can fail becomes the
UpstreamError (502, 503 or 504, with its status) the server answers with, and none hangs."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from typing import Iterator

import pytest

from ml_runtime.errors import UpstreamError
from ml_runtime.upstream import MODEL_URL_ENV, model_url, post_json


class Upstream(http.server.BaseHTTPRequestHandler):
    last_host = ""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        Upstream.last_host = self.headers["host"]
        kind = self.path.strip("/")
        if kind == "slow":
            time.sleep(2)
        status, body = {"ok": (200, b'{"answer": 42}'), "busy": (429, b'{"error": "rate limited"}'),
                        "down": (503, b"maintenance"), "broken": (500, b"boom"),
                        "garbage": (200, b"<html>"), "slow": (200, b"{}")}[kind]
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_an_answer_is_its_json(upstream: str) -> None:
    assert post_json(f"{upstream}/ok", {"q": 1}) == {"answer": 42}


def test_localhost_names_reach_the_loopback_under_their_own_host(upstream: str) -> None:
    port = upstream.rsplit(":", 1)[1]
    assert post_json(f"http://smollm2.ml.localhost:{port}/ok", {}) == {"answer": 42}
    assert Upstream.last_host == f"smollm2.ml.localhost:{port}"


@pytest.mark.parametrize("path, status, upstream_status", [
    ("busy", 503, 429), ("down", 503, 503), ("broken", 502, 500), ("garbage", 502, None),
])
def test_a_bad_answer_is_an_upstream_error_with_its_status(upstream: str, path: str, status: int,
                                                           upstream_status: int) -> None:
    with pytest.raises(UpstreamError) as raised:
        post_json(f"{upstream}/{path}", {})
    assert (raised.value.status, raised.value.upstream_status) == (status, upstream_status)


def test_no_answer_in_time_is_a_504_not_a_hang(upstream: str) -> None:
    started = time.monotonic()
    with pytest.raises(UpstreamError, match="did not answer within 0.5 s") as raised:
        post_json(f"{upstream}/slow", {}, timeout=0.5)
    assert raised.value.status == 504 and time.monotonic() - started < 1.5


def test_an_unreachable_upstream_is_a_503() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(UpstreamError, match="cannot be reached") as raised:
        post_json(f"http://127.0.0.1:{port}/x", {})
    assert raised.value.status == 503


def test_model_urls_follow_the_environment() -> None:
    environ = {MODEL_URL_ENV: "http://{model}.ml.localhost:8480"}
    assert model_url("support_reply", 2, environ) == "http://support-reply.ml.localhost:8480/v2/"
    with pytest.raises(RuntimeError, match=f"{MODEL_URL_ENV} is not set"):
        model_url("smollm2", 1, {})
