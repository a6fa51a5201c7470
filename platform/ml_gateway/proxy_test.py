"""The local gateway: 404 listings, streamed bodies, kept-alive backend
connections, safe retries and route table reloads, against small real HTTP backends on
127.0.0.1 (the standard library's server, in threads)."""

from __future__ import annotations

import asyncio
import http.client
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

from ml_gateway.proxy import Gateway


# ----------------------------------------------------------------------------------------------
# Backends and a gateway running in this process


# Handles a request itself (True), or lets the backend echo it.
Hook = Callable[[http.server.BaseHTTPRequestHandler, bytes], bool]


class Backend:
    """A stdlib HTTP/1.1 server on 127.0.0.1 that echoes what it received as JSON, with hooks."""

    def __init__(self, tag: str, hook: Optional[Hook] = None) -> None:
        self.tag = tag
        self.connections = 0
        self.requests: List[Dict[str, Any]] = []
        backend = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                backend.connections += 1

            def do_GET(self) -> None:
                self._handle()

            def do_POST(self) -> None:
                self._handle()

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("transfer-encoding", ""):
                    parts = []
                    while True:
                        size = int(self.rfile.readline().strip(), 16)
                        if not size:
                            self.rfile.readline()
                            return b"".join(parts)
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("content-length") or 0))

            def _handle(self) -> None:
                body = self._body()
                headers = {k.lower(): v for k, v in self.headers.items()}
                backend.requests.append({"path": self.path, "headers": headers, "body": body})
                if hook is not None and hook(self, body):
                    return
                if self.path.startswith("/v1/trickle"):  # a stream: a chunk, then a pause
                    self.send_response(200)
                    self.send_header("content-type", "application/x-ndjson")
                    self.send_header("transfer-encoding", "chunked")
                    self.end_headers()
                    for i in range(3):
                        line = b'{"n":%d}\n' % i
                        self.wfile.write(b"%x\r\n%b\r\n" % (len(line), line))
                        self.wfile.flush()
                        time.sleep(0.4)
                    self.wfile.write(b"0\r\n\r\n")
                    return
                if self.path.startswith("/v1/chunked"):
                    self.send_response(200)
                    self.send_header("content-type", "application/octet-stream")
                    self.send_header("transfer-encoding", "chunked")
                    self.end_headers()
                    for i in range(64):
                        chunk = bytes([i]) * 65536
                        self.wfile.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                    self.wfile.write(b"0\r\n\r\n")
                    return
                reply = json.dumps({"tag": backend.tag, "path": self.path, "body_size": len(body),
                                    "body_end": body[-16:].decode("latin-1"),
                                    "headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Running:
    """A Gateway on its own event loop in a thread."""

    def __init__(self, routes: Path) -> None:
        self.routes = routes
        self.loop = asyncio.new_event_loop()
        self.gateway = Gateway(routes, read_timeout=10)
        self.gateway.reload()
        self.port = self.loop.run_until_complete(self.gateway.start("127.0.0.1", 0))
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def reload(self) -> bool:
        async def reload() -> bool:
            return self.gateway.reload()

        return asyncio.run_coroutine_threadsafe(reload(), self.loop).result(10)

    def request(self, method: str, path: str, host: str = "iris.ml.localhost", body: Any = None,
                headers: Optional[Dict[str, str]] = None, chunked: bool = False,
                connection: Optional[http.client.HTTPConnection] = None) -> Tuple[int, Dict[str, str], bytes]:
        conn = connection or http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        conn.request(method, path, body=body, headers={"host": host, **(headers or {})}, encode_chunked=chunked)
        response = conn.getresponse()
        data = response.read()
        if connection is None:
            conn.close()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.gateway.stop(1), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def write_routes(path: Path, generation: int, models: Dict[str, Dict[int, Backend]]) -> None:
    data = {"generation": generation, "domain": "localhost",
            "models": {m: {str(v): {"backend": b.address, "digest": f"sha256:{b.tag}"} for v, b in vs.items()}
                       for m, vs in models.items()}}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


@pytest.fixture
def backends() -> Iterator[Callable[..., Backend]]:
    started: List[Backend] = []

    def start(tag: str, hook: Any = None) -> Backend:
        started.append(Backend(tag, hook))
        return started[-1]

    yield start
    for backend in started:
        backend.close()


@pytest.fixture
def gateway_for(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    running: List[Running] = []

    def start(models: Dict[str, Dict[int, Backend]], generation: int = 1) -> Running:
        routes = tmp_path / "routes.json"
        write_routes(routes, generation, models)
        running.append(Running(routes))
        return running[-1]

    yield start
    for gateway in running:
        gateway.close()


# ----------------------------------------------------------------------------------------------
# Proxying


def test_requests_reach_the_version_they_name(backends, gateway_for) -> None:
    v1, v2 = backends("v1"), backends("v2")
    gateway = gateway_for({"iris": {1: v1, 2: v2}})
    status, headers, body = gateway.request("POST", "/v1/predict?x=1", host=f"iris.ml.localhost:{gateway.port}",
                                            body=b'{"a": 1}', headers={"x-request-id": "req-42"})
    reply = json.loads(body)
    assert status == 200 and reply["tag"] == "v1" and reply["path"] == "/v1/predict?x=1"
    assert reply["headers"]["x-request-id"] == "req-42"
    assert reply["headers"]["x-forwarded-for"] == "127.0.0.1"
    assert reply["headers"]["x-forwarded-host"] == f"iris.ml.localhost:{gateway.port}"
    assert reply["headers"]["host"] == f"iris.ml.localhost:{gateway.port}"
    assert headers["x-ml-digest"] == "sha256:v1"
    assert json.loads(gateway.request("GET", "/v2/health/ready")[2])["tag"] == "v2"  # the highest
    assert json.loads(gateway.request("GET", "/v2/models/iris/versions/1/ready")[2])["tag"] == "v1"
    # A request id is made up when the client sends none (or an unusable one), and a client's
    # X-Forwarded-For is extended, not replaced.
    reply = json.loads(gateway.request("GET", "/v1/x", headers={"x-request-id": "bad id!",
                                                                 "x-forwarded-for": "10.1.2.3"})[2])
    assert len(reply["headers"]["x-request-id"]) == 32
    assert reply["headers"]["x-forwarded-for"] == "10.1.2.3, 127.0.0.1"


def test_unknown_hosts_and_versions_get_a_json_404_listing_the_routes(backends, gateway_for) -> None:
    gateway = gateway_for({"iris": {1: backends("v1")}})
    for host, path, error in [("iris.ml.localhost", "/v4/predict", "iris has no version 4 deployed (live: v1)"),
                              ("wine.ml.localhost", "/v1/predict", "no model 'wine' is deployed"),
                              ("localhost", "/", "names no model")]:
        status, headers, body = gateway.request("POST", path, host=host, body=b"{}")
        payload = json.loads(body)
        assert status == 404 and headers["content-type"] == "application/json"
        assert error in payload["error"]
        assert payload["routed"] == [f"http://iris.ml.localhost:{gateway.port}/v1/"]


def test_bodies_are_streamed_both_ways(backends, gateway_for) -> None:
    backend = backends("v1")
    gateway = gateway_for({"iris": {1: backend}})
    # A chunked upload of 3 MiB (larger than what is kept for a retry).
    payload = [bytes([i % 251]) * 65536 for i in range(48)] + [b"the-end"]
    status, _, body = gateway.request("POST", "/v1/predict", body=iter(payload), chunked=True)
    reply = json.loads(body)
    assert status == 200 and reply["body_size"] == 48 * 65536 + 7 and reply["body_end"].endswith("the-end")
    assert "chunked" in reply["headers"]["transfer-encoding"]
    # A Content-Length upload.
    big = b"x" * (2 * 2**20) + b"tail"
    reply = json.loads(gateway.request("POST", "/v1/predict", body=big)[2])
    assert reply["body_size"] == len(big) and reply["headers"]["content-length"] == str(len(big))
    # A chunked download of 4 MiB.
    status, headers, body = gateway.request("GET", "/v1/chunked")
    assert status == 200 and headers["transfer-encoding"] == "chunked"
    assert body == b"".join(bytes([i]) * 65536 for i in range(64))


def test_a_stream_is_relayed_as_it_comes(backends, gateway_for) -> None:
    gateway = gateway_for({"iris": {1: backends("v1")}})
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=20)
    started = time.monotonic()
    conn.request("POST", "/v1/trickle", body=b"{}", headers={"host": "iris.ml.localhost"})
    response = conn.getresponse()
    arrivals = []
    for line in response:
        arrivals.append((time.monotonic() - started, json.loads(line)["n"]))
    conn.close()
    assert [n for _, n in arrivals] == [0, 1, 2]
    # The first line reached the client while the backend was still pausing: nothing buffered.
    assert arrivals[0][0] < arrivals[-1][0] - 0.6, arrivals


def test_backend_connections_are_kept_alive(backends, gateway_for) -> None:
    backend = backends("v1")
    gateway = gateway_for({"iris": {1: backend}})
    client = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    for _ in range(20):
        assert gateway.request("POST", "/v1/predict", body=b"{}", connection=client)[0] == 200
    for _ in range(5):  # a new client connection each time still reuses the backend's
        assert gateway.request("GET", "/v1/predict")[0] == 200
    client.close()
    assert backend.connections == 1


def read_response(reader: Any) -> Tuple[int, Dict[str, str], bytes]:
    """One Content-Length response from a raw connection (http.client closes its file after one)."""
    status = int(reader.readline().split()[1])
    headers = {}
    while True:
        line = reader.readline().decode("latin-1").strip()
        if not line:
            break
        name, _, value = line.partition(":")
        headers[name.lower()] = value.strip()
    return status, headers, reader.read(int(headers.get("content-length", 0)))


def test_expect_100_continue_and_pipelined_requests(backends, gateway_for) -> None:
    gateway = gateway_for({"iris": {1: backends("v1")}})
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as s:
        reader = s.makefile("rb")
        s.sendall(b"POST /v1/predict HTTP/1.1\r\nhost: iris.ml.localhost\r\ncontent-length: 5\r\n"
                  b"expect: 100-continue\r\n\r\n")
        assert reader.readline() == b"HTTP/1.1 100 Continue\r\n" and reader.readline() == b"\r\n"
        s.sendall(b"hello")
        status, _, body = read_response(reader)
        assert status == 200 and json.loads(body)["body_size"] == 5
        # Two requests in one write are answered in order.
        s.sendall(b"GET /v1/first HTTP/1.1\r\nhost: iris.ml.localhost\r\n\r\n"
                  b"GET /v1/second HTTP/1.1\r\nhost: iris.ml.localhost\r\n\r\n")
        assert [json.loads(read_response(reader)[2])["path"] for _ in range(2)] == ["/v1/first", "/v1/second"]


# ----------------------------------------------------------------------------------------------
# Route table reloads and retries


def test_reload_switches_routes_and_keeps_the_table_when_a_new_one_is_bad(backends, gateway_for) -> None:
    old, new = backends("old"), backends("new")
    gateway = gateway_for({"iris": {1: old}})
    assert json.loads(gateway.request("GET", "/v1/x")[2])["tag"] == "old"
    write_routes(gateway.routes, 2, {"iris": {1: new}, "digits": {1: old}})
    assert gateway.reload()
    assert json.loads(gateway.request("GET", "/v1/x")[2])["tag"] == "new"
    assert json.loads(gateway.request("GET", "/v1/x", host="digits.ml.localhost")[2])["tag"] == "old"
    admin = json.loads(gateway.request("GET", "/-/routes", host="localhost")[2])
    assert admin["generation"] == 2 and admin["reload_error"] is None
    assert admin["models"]["iris"]["1"] == {"backend": new.address, "digest": "sha256:new"}

    gateway.routes.write_text('{"generation": 3, "models": {"iris": ')
    assert not gateway.reload()
    admin = json.loads(gateway.request("GET", "/-/routes", host="localhost")[2])
    assert admin["generation"] == 2 and "routes.json" in admin["reload_error"]
    assert json.loads(gateway.request("GET", "/v1/x")[2])["tag"] == "new"


def test_a_changed_file_is_picked_up_without_a_signal(backends, gateway_for) -> None:
    old, new = backends("old"), backends("new")
    gateway = gateway_for({"iris": {1: old}})
    watcher = asyncio.run_coroutine_threadsafe(gateway.gateway.watch_routes(interval=0.05), gateway.loop)
    try:
        write_routes(gateway.routes, 2, {"iris": {1: new}})
        deadline = time.monotonic() + 5
        while gateway.gateway.table.generation != 2:
            assert time.monotonic() < deadline, "the gateway did not notice the new route table"
            time.sleep(0.02)
        assert json.loads(gateway.request("GET", "/v1/x")[2])["tag"] == "new"
    finally:
        watcher.cancel()


def test_a_kept_alive_connection_the_backend_closed_is_retried(backends, gateway_for) -> None:
    def close_after_answering(handler: http.server.BaseHTTPRequestHandler, body: bytes) -> bool:
        # Answer as if the connection stayed open, then drop it while the gateway already
        # reuses it: the request sent on it was never read.
        handler.close_connection = True
        reply = b'{"tag": "flaky"}'
        handler.send_response(200)
        handler.send_header("content-length", str(len(reply)))
        handler.end_headers()
        handler.wfile.write(reply)
        handler.wfile.flush()
        time.sleep(0.2)
        return True

    gateway = gateway_for({"iris": {1: backends("flaky", close_after_answering)}})
    client = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    for _ in range(3):
        status, _, body = gateway.request("POST", "/v1/predict", body=b'{"n": 1}', connection=client)
        assert status == 200 and json.loads(body)["tag"] == "flaky"
    client.close()
    assert gateway.gateway.retries >= 1


def test_a_replaced_backend_refusing_with_503_is_retried_on_its_replacement(backends, gateway_for) -> None:
    received, release = threading.Event(), threading.Event()

    def shutting_down(handler: http.server.BaseHTTPRequestHandler, body: bytes) -> bool:
        received.set()
        release.wait(10)
        reply = b'{"error": "server is shutting down"}'
        handler.send_response(503)
        handler.send_header("content-length", str(len(reply)))
        handler.end_headers()
        handler.wfile.write(reply)
        return True

    old, new = backends("old", shutting_down), backends("new")
    gateway = gateway_for({"iris": {1: old}})
    result: Dict[str, Any] = {}
    client = threading.Thread(target=lambda: result.update(
        zip(("status", "headers", "body"), gateway.request("POST", "/v1/predict", body=b'{"n": 1}'))))
    client.start()
    assert received.wait(10)
    admin = json.loads(gateway.request("GET", "/-/routes", host="localhost")[2])
    assert admin["in_flight"] == {old.address: 1}  # what the deploy tool waits on before SIGTERM
    write_routes(gateway.routes, 2, {"iris": {1: new}})
    assert gateway.reload()
    release.set()
    client.join(20)
    assert result["status"] == 200 and json.loads(result["body"])["tag"] == "new"
    assert result["headers"]["x-ml-digest"] == "sha256:new"
    assert new.requests[0]["body"] == b'{"n": 1}'  # the body was sent again


def test_a_backend_that_cannot_be_reached_is_a_502_naming_it(gateway_for) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = types.SimpleNamespace(tag="dead", address=f"127.0.0.1:{s.getsockname()[1]}")
    gateway = gateway_for({"iris": {1: dead}})
    started = time.monotonic()
    status, _, body = gateway.request("POST", "/v1/predict", body=b"{}")
    assert status == 502 and time.monotonic() - started < 5
    payload = json.loads(body)
    assert f"iris v1 ({dead.address}) did not answer: cannot connect" in payload["error"]
    assert gateway.gateway.retries == 3


def test_the_command_reloads_on_sighup_and_stops_on_sigterm(backends, tmp_path: Path) -> None:
    old, new = backends("old"), backends("new")
    routes, ready = tmp_path / "routes.json", tmp_path / "url"
    write_routes(routes, 1, {"iris": {1: old}})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "ml_gateway", "--routes", str(routes), "--port", str(port),
         "--ready-file", str(ready)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert process.poll() is None, process.stdout.read().decode()  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            time.sleep(0.02)

        def tag() -> str:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/v1/x", headers={"host": "iris.ml.localhost"})
            tag = json.loads(conn.getresponse().read())["tag"]
            conn.close()
            return tag

        assert tag() == "old"
        write_routes(routes, 2, {"iris": {1: new}})
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while tag() != "new":
            assert time.monotonic() < deadline, "SIGHUP did not reload the route table"
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        log = process.stdout.read().decode()  # type: ignore[union-attr]
        assert '"event": "routes", "generation": 2' in log and '"event": "stopped"' in log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# ----------------------------------------------------------------------------------------------
# The index page


def test_the_index_page_lists_every_model_version_with_its_readiness_and_rate(backends, gateway_for) -> None:
    v1, v2 = backends("v1"), backends("v2")
    gone = backends("gone")
    gone.close()  # deployed but not answering: not ready
    gateway = gateway_for({"iris": {1: v1, 2: v2}, "digits": {1: gone}})
    for _ in range(6):
        assert gateway.request("POST", "/v2/predict", body=b"{}")[0] == 200
    status, headers, page = gateway.request("GET", "/", host=f"ml.localhost:{gateway.port}")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    text = page.decode()
    rows = {row.split("</td>")[0].split(">")[-1] + " " + row.split("<td>")[1].split("<")[0]: row
            for row in text.split("<tr>")[2:]}
    assert set(rows) == {"digits v1", "iris v1", "iris v2"}
    assert "sha256:v2" in rows["iris v2"] and ">ready<" in rows["iris v2"] and "0.10/s" in rows["iris v2"]
    assert "not ready" in rows["digits v1"]
    assert f'href="http://iris.ml.localhost:{gateway.port}/docs"' in rows["iris v2"]
    assert "/metrics" in rows["iris v2"] and "/docs" not in rows["iris v1"]  # unversioned paths go to v2
    # Any other host still names a model.
    assert gateway.request("GET", "/", host="nothing.localhost")[0] == 404
