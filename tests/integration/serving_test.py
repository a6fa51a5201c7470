"""The serving runtime end to end: a real server process, real worker processes started from
the model's own environment, real HTTP on 127.0.0.1.

The probe model (tests/models/probe) pins older fastjsonschema and httptools than the server
uses, and misbehaves on request (raises, hangs, exits, segfaults, gets SIGKILLed).
"""

from __future__ import annotations

import base64
import concurrent.futures
import http.client
import json
import signal
import socket
import time
from pathlib import Path
from typing import Iterator

import pytest

from integration.served_model import ServedModel

PACKAGE = Path("tests.models.probe/probe")
SERVING_LOCK = Path("platform/serving.lock")


class Server(ServedModel):
    def __init__(self, tmp: Path, *args: str) -> None:
        super().__init__(PACKAGE, tmp, *args)

    def metric(self, name: str) -> float:
        _, _, text = self.request("GET", "/metrics")
        total = 0.0
        for line in text.decode().splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.request("GET", "/v2/health/ready")[0] == 200:
                return
            time.sleep(0.05)
        raise AssertionError("server never became ready again")


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("server"), "--workers", "2", "--max-queue", "2",
                    "--max-body-bytes", "4096")
    try:
        yield server
    finally:
        server.stop()


ITEMS = {"items": [{"name": "a", "size": 1}, {"name": "b", "size": 2, "tags": ["x"]}]}


def test_predict_sees_the_models_own_dependency_versions(server: Server) -> None:
    status, headers, body = server.request("POST", "/v1/predict", ITEMS)
    assert status == 200, body
    assert body["items"] == [{"name": "a", "size": 1, "tags": None}, {"name": "b", "size": 2, "tags": ["x"]}]
    # The model's lockfile pins these; the server's environment has newer ones.
    assert body["fastjsonschema_version"] == "2.15.3"
    assert body["httptools_version"] == "0.6.0"
    serving_lock = SERVING_LOCK.read_text()
    assert '"project_name": "fastjsonschema"' in serving_lock and '"version": "2.22.3"' in serving_lock
    assert '"version": "2.15.3"' not in serving_lock


def test_request_id_is_honoured_and_logged(server: Server) -> None:
    status, headers, _ = server.request("POST", "/v1/predict", ITEMS, headers={"x-request-id": "req-42"})
    assert status == 200 and headers["x-request-id"] == "req-42"
    _, generated, _ = server.request("GET", "/v2/health/live")
    assert len(generated["x-request-id"]) == 32
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [json.loads(l) for l in server.stdout_path.read_text().splitlines() if l.startswith("{")]
        logged = [l for l in lines if l.get("request_id") == "req-42"]
        if logged:
            break
        time.sleep(0.05)
    assert logged and logged[0]["status"] == 200 and logged[0]["path"] == "/v1/predict"


@pytest.mark.parametrize(
    "raw, content_type, status, fragment",
    [
        (b'{"items": [', "application/json", 400, "malformed JSON"),
        (b'{"items": [{"name": "a", "size": "big"}]}', "application/json", 422, "items[0].size"),
        (b'{"items": [{"name": "a"}]}', "application/json", 422, "items[0]"),
        (b'{"items": [], "extra": 1}', "application/json", 422, "invalid request"),
        (b"items=1", "application/x-www-form-urlencoded", 415, "unsupported content type"),
        (b"x" * 5000, "application/json", 413, "larger than 4096 bytes"),
    ],
)
def test_bad_requests(server: Server, raw: bytes, content_type: str, status: int, fragment: str) -> None:
    got, _, body = server.request("POST", "/v1/predict", raw=raw, headers={"content-type": content_type})
    assert got == status, body
    assert fragment in json.dumps(body)
    assert server.request("POST", "/v1/predict", ITEMS)[0] == 200  # still serving


def test_schema_violation_names_the_field(server: Server) -> None:
    status, _, body = server.request("POST", "/v1/predict", {"items": [{"name": "a", "size": "big"}]})
    assert status == 422
    assert body["field"] == "items[0].size"


def test_unknown_route(server: Server) -> None:
    status, _, body = server.request("GET", "/v1/nope")
    assert status == 404 and "routes" in body
    assert server.request("POST", "/v9/predict", ITEMS)[0] == 404


def test_model_exception_is_500_with_request_id_and_logged_traceback(server: Server) -> None:
    status, headers, body = server.request("POST", "/v1/fail", {"message": "boom"},
                                           headers={"x-request-id": "fail-1"})
    assert status == 500
    assert body["request_id"] == "fail-1"
    assert "Traceback" not in json.dumps(body) and "boom" not in json.dumps(body)
    deadline = time.monotonic() + 5
    while "model failure: boom" not in server.stderr_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = server.stderr_path.read_text()
    assert "request fail-1" in log and "Traceback" in log and "model failure: boom" in log


def test_state_binary_input_and_stdout_prints(server: Server) -> None:
    status, _, body = server.request("POST", "/v1/upload", raw=b"\x07\x00\x01",
                                     headers={"content-type": "application/octet-stream"})
    assert (status, body) == (200, {"length": 3, "first": 7})
    encoded = base64.b64encode(b"\x05\x06").decode()
    assert server.request("POST", "/v1/upload", {"data": encoded})[2] == {"length": 2, "first": 5}
    assert server.request("POST", "/v1/shout", {"text": "hi"})[2] == "HI"
    # Each worker keeps its own count; together they served every predict so far.
    counts = {server.request("POST", "/v1/count", {})[2] for _ in range(6)}
    assert max(counts) >= 1


def test_openapi_describes_every_endpoint(server: Server) -> None:
    status, _, spec = server.request("GET", "/openapi.json")
    assert status == 200 and spec["openapi"].startswith("3.")
    for endpoint in ("predict", "count", "pid", "sleep", "fail", "exit", "segfault", "upload", "shout"):
        assert f"/v1/{endpoint}" in spec["paths"]
    item = spec["components"]["schemas"]["Item"]
    assert item["required"] == ["name", "size"]
    assert item["properties"]["size"] == {"type": "integer"}
    upload = spec["paths"]["/v1/upload"]["post"]["requestBody"]["content"]
    assert "application/octet-stream" in upload
    assert "/v2/models/probe/infer" in spec["paths"]
    # The model's own example, checked against its endpoint when it loaded.
    predict = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert predict["example"] == {"items": [{"name": "a", "size": 1, "tags": ["x"]}]}
    assert server.request("POST", "/v1/predict", predict["example"])[0] == 200
    download = spec["paths"]["/v1/download"]["post"]["responses"]["200"]["content"]
    assert download == {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    ticks = spec["paths"]["/v1/ticks"]["post"]["responses"]["200"]["content"]
    assert ticks["application/x-ndjson"]["schema"] == {"$ref": "#/components/schemas/Tick"}
    assert "text/event-stream" in ticks


def test_an_endpoint_annotated_bytes_answers_them_raw(server: Server) -> None:
    status, headers, body = server.request("POST", "/v1/download", {"size": 300})
    assert status == 200 and headers["content-type"] == "application/octet-stream"
    assert body == bytes(i % 256 for i in range(300))


def test_timeout_is_504_and_the_worker_is_replaced(server: Server) -> None:
    restarts = server.metric("ml_worker_restarts_total")
    status, _, body = server.request("POST", "/v1/sleep", {"seconds": 5})
    assert status == 504, body  # the probe's ml_model sets timeout=2
    server.wait_ready()
    assert server.request("POST", "/v1/predict", ITEMS)[0] == 200
    assert server.metric("ml_worker_restarts_total") == restarts + 1


@pytest.mark.parametrize("endpoint", ["exit", "segfault", "kill"])
def test_dying_worker_fails_only_its_request_and_is_restarted(server: Server, endpoint: str) -> None:
    server.wait_ready()
    restarts = server.metric("ml_worker_restarts_total")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        slow = pool.submit(server.request, "POST", "/v1/sleep", {"seconds": 1})
        time.sleep(0.2)  # the other worker is busy sleeping
        status, _, body = server.request("POST", f"/v1/{endpoint}", {})
        assert status == 503, body
        assert slow.result()[0] == 200  # the other in-flight request was unaffected
    server.wait_ready()
    assert server.request("POST", "/v1/predict", ITEMS)[0] == 200
    assert server.metric("ml_worker_restarts_total") == restarts + 1


def test_readiness_reports_not_ready_until_a_worker_is_back(tmp_path: Path) -> None:
    server = Server(tmp_path, "--workers", "1")
    try:
        assert server.request("GET", "/v2/health/ready")[0] == 200
        assert server.request("POST", "/v1/kill", {})[0] == 503
        # The only worker is gone: not ready until its replacement has loaded the model.
        assert server.request("GET", "/v2/health/ready")[0] == 503
        assert server.request("GET", "/v2/models/probe/versions/1/ready")[0] == 503
        assert server.request("GET", "/v2/health/live")[0] == 200
        server.wait_ready()
        assert server.request("POST", "/v1/predict", ITEMS)[0] == 200
    finally:
        assert server.stop() == 0


def test_full_queue_is_503_with_retry_after(server: Server) -> None:
    server.wait_ready()
    # 2 workers busy + 2 queued fill the server; the rest must be turned away at once.
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(server.request, "POST", "/v1/sleep", {"seconds": 1}) for _ in range(8)]
        results = [f.result() for f in futures]
    statuses = sorted(r[0] for r in results)
    assert statuses.count(200) >= 4 and statuses.count(503) >= 1, statuses
    rejected = next(r for r in results if r[0] == 503)
    assert rejected[1]["retry-after"] == "1"
    assert server.metric("ml_queue_depth") == 0


def test_metrics(server: Server) -> None:
    server.request("POST", "/v1/predict", ITEMS)
    _, headers, text = server.request("GET", "/metrics")
    assert headers["content-type"].startswith("text/plain")
    text = text.decode()
    for name in ("ml_requests_total", "ml_request_errors_total", "ml_request_duration_seconds_bucket",
                 "ml_requests_in_flight", "ml_queue_depth", "ml_worker_restarts_total", "ml_workers_ready"):
        assert f"\n{name}{{" in text or text.startswith(f"{name}{{") or f"# TYPE {name} " in text, name
    assert 'route="/v1/predict",method="POST",status="200"' in text


def test_sigterm_finishes_in_flight_requests_and_exits_0(tmp_path: Path) -> None:
    server = Server(tmp_path, "--workers", "1")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(server.request, "POST", "/v1/sleep", {"seconds": 1})
        time.sleep(0.3)
        server.process.send_signal(signal.SIGTERM)
        assert in_flight.result()[0] == 200
    assert server.process.wait(timeout=20) == 0
    assert '"event": "stopped"' in server.stdout_path.read_text()


def test_a_request_whose_client_disconnected_is_dropped_from_the_queue(tmp_path: Path) -> None:
    server = Server(tmp_path, "--workers", "1")
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            busy = pool.submit(server.request, "POST", "/v1/sleep", {"seconds": 1})
            time.sleep(0.3)  # the only worker is busy: the next request queues
            body = json.dumps({"seconds": 1}).encode()
            with socket.create_connection((server.host, server.port)) as gone:
                gone.sendall(b"POST /v1/sleep HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\n\r\n%s" % (len(body), body))
                time.sleep(0.2)
            assert busy.result()[0] == 200
        # Had the abandoned request run, this one would wait a second behind it.
        started = time.monotonic()
        assert server.request("POST", "/v1/sleep", {"seconds": 0})[0] == 200
        assert time.monotonic() - started < 0.8
        assert server.metric("ml_abandoned_requests_total") == 1
    finally:
        assert server.stop() == 0


# ---------------------------------------------------------------------------------------------
# Streaming: the probe's `ticks` is a generator


def open_stream(server: Server, body: dict, accept: str = "") -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    connection = http.client.HTTPConnection(server.host, server.port, timeout=30)
    headers = {"content-type": "application/json", **({"accept": accept} if accept else {})}
    connection.request("POST", "/v1/ticks", body=json.dumps(body), headers=headers)
    return connection, connection.getresponse()


def test_a_generator_endpoint_streams_each_item_as_it_is_made(server: Server) -> None:
    server.wait_ready()
    started = time.monotonic()
    connection, response = open_stream(server, {"to": 4, "delay": 0.4})
    try:
        assert response.status == 200 and response.getheader("content-type") == "application/x-ndjson"
        assert response.getheader("transfer-encoding") == "chunked"
        arrivals, items = [], []
        for line in response:
            arrivals.append(time.monotonic() - started)
            items.append(json.loads(line))
    finally:
        connection.close()
    assert [item["n"] for item in items] == [0, 1, 2, 3]
    # The first tick arrived before the model made the last one (1.2 s of delays later).
    assert arrivals[0] < arrivals[-1] - 0.8, arrivals


def test_sse_when_the_client_accepts_event_streams(server: Server) -> None:
    connection, response = open_stream(server, {"to": 3}, accept="text/event-stream")
    try:
        assert response.getheader("content-type") == "text/event-stream"
        text = response.read().decode()
    finally:
        connection.close()
    events = [block for block in text.split("\n\n") if block]
    assert [json.loads(e.removeprefix("data: "))["n"] for e in events] == [0, 1, 2]


def test_a_failure_after_the_first_item_is_the_streams_last_event(server: Server) -> None:
    for accept in ("", "text/event-stream"):
        connection, response = open_stream(server, {"to": 5, "fail_at": 2}, accept)
        try:
            text = response.read().decode()  # ends: not a hung connection
        finally:
            connection.close()
        if accept:
            *items, last = [block for block in text.split("\n\n") if block]
            assert last.startswith("event: error\ndata: ")
            error = json.loads(last.split("data: ", 1)[1])
        else:
            *items, error_line = text.splitlines()
            error = json.loads(error_line)
        assert len(items) == 2
        assert error["status"] == 422 and error["detail"] == "fail_at: refusing tick 2" and error["request_id"]
    # Refused before its first item: an ordinary error response.
    status, _, body = server.request("POST", "/v1/ticks", {"to": 5, "fail_at": 0})
    assert status == 422 and body["detail"] == "fail_at: refusing tick 0"
    status, _, body = server.request("POST", "/v1/ticks", {"to": "five"})
    assert status == 422 and body["field"] == "to"


def test_the_request_timeout_bounds_a_stream(server: Server) -> None:
    server.wait_ready()
    restarts = server.metric("ml_worker_restarts_total")
    connection, response = open_stream(server, {"to": 10, "delay": 0.5})  # 4.5 s; the probe's timeout is 2
    try:
        *items, error_line = response.read().decode().splitlines()
    finally:
        connection.close()
    assert 2 <= len(items) <= 5 and json.loads(error_line)["status"] == 504
    server.wait_ready()
    assert server.metric("ml_worker_restarts_total") == restarts + 1  # the stuck worker was replaced


def test_a_client_that_disconnects_stops_the_generation(tmp_path: Path) -> None:
    server = Server(tmp_path, "--workers", "1")
    try:
        body = json.dumps({"to": 100, "delay": 0.1}).encode()
        with socket.create_connection((server.host, server.port)) as gone:
            gone.settimeout(10)
            gone.sendall(b"POST /v1/ticks HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                         b"content-length: %d\r\n\r\n%s" % (len(body), body))
            received = b""
            while b'"n":0' not in received:  # the head and the first tick may come apart
                chunk = gone.recv(4096)
                assert chunk, f"the server closed the stream before its first item: {received!r}"
                received += chunk
        # Had the generation gone on, the only worker would be busy for ten more seconds.
        started = time.monotonic()
        assert server.request("POST", "/v1/sleep", {"seconds": 0})[0] == 200
        assert time.monotonic() - started < 1.0
        assert server.metric("ml_worker_restarts_total") == 0  # stopped, not killed
    finally:
        assert server.stop() == 0


# ---------------------------------------------------------------------------------------------
# Adaptive batching: the probe's `upper` is declared batchable (up to 8, waiting 50 ms)


def _concurrently(server: Server, bodies: list, headers_of=lambda i: None) -> list:
    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        futures = [pool.submit(server.request, "POST", "/v1/upper", body, headers_of(i))
                   for i, body in enumerate(bodies)]
        return [f.result() for f in futures]


def test_concurrent_requests_are_answered_by_one_model_call_each_with_its_own_answer(tmp_path: Path) -> None:
    server = Server(tmp_path, "--workers", "1")
    try:
        calls, requests = server.metric("ml_batch_calls_total"), server.metric("ml_batched_requests_total")
        words = [f"w{i}" for i in range(6)]
        results = _concurrently(server, [{"text": w} for w in words], lambda i: {"x-request-id": f"req-{i}"})
        for i, (status, headers, body) in enumerate(results):
            assert status == 200, body
            assert body["text"] == words[i].upper() and headers["x-request-id"] == f"req-{i}"
        sizes = [body["batch_size"] for _, _, body in results]
        assert max(sizes) > 1, sizes  # 6 requests within 50 ms of each other, one worker
        assert server.metric("ml_batched_requests_total") - requests == 6
        assert server.metric("ml_batch_calls_total") - calls < 6
        # More than max_batch_size at once: no batch holds more than 8.
        results = _concurrently(server, [{"text": f"x{i}"} for i in range(12)])
        assert all(status == 200 for status, _, _ in results)
        assert max(body["batch_size"] for _, _, body in results) <= 8
    finally:
        assert server.stop() == 0


def test_a_bad_request_in_a_batch_fails_alone(tmp_path: Path) -> None:
    server = Server(tmp_path, "--workers", "1")
    try:
        bodies = [{"text": "fine"}, {"text": "refuse"}, {"text": "crash"}, {"txt": "misspelt"}, {"text": "ok"}]
        results = _concurrently(server, bodies, lambda i: {"x-request-id": f"bad-{i}"})
        (fine, refused, crashed, misspelt, ok) = results
        assert fine[0] == 200 and fine[2]["text"] == "FINE"
        assert ok[0] == 200 and ok[2]["text"] == "OK"
        assert refused[0] == 422 and refused[2]["detail"] == "refused: refuse"
        assert crashed[0] == 500 and crashed[2]["request_id"] == "bad-2"
        assert misspelt[0] == 422 and "text" in misspelt[2]["detail"]  # the server's schema check
        assert "model failure in a batch" in server.stderr_path.read_text()
    finally:
        assert server.stop() == 0


def test_batching_off_calls_the_model_once_per_request(tmp_path: Path) -> None:
    server = Server(tmp_path, "--workers", "1", "--no-batching")
    try:
        results = _concurrently(server, [{"text": f"w{i}"} for i in range(4)])
        assert [body["batch_size"] for _, _, body in results] == [1, 1, 1, 1]
        assert server.metric("ml_batch_calls_total") == 0
    finally:
        assert server.stop() == 0


# ---------------------------------------------------------------------------------------------
# Worker sizing: from the model's settings (the probe declares none: 1 worker, 1 thread)


def test_workers_and_their_threads_come_from_the_model_not_the_host(tmp_path: Path) -> None:
    server = Server(tmp_path)
    try:
        text = server.stdout_path.read_text()
        serving = json.loads(next(line for line in text.splitlines() if '"event": "serving"' in line))
        assert (serving["workers"], serving["threads"]) == (1, 1)
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            assert server.request("POST", "/v1/environment", {"name": name})[2] == "1"
    finally:
        assert server.stop() == 0
    (tmp_path / "more").mkdir()
    server = Server(tmp_path / "more", "--workers", "2", "--threads", "3")
    try:
        assert server.request("POST", "/v1/environment", {"name": "OMP_NUM_THREADS"})[2] == "3"
        pids: set = set()
        deadline = time.monotonic() + 20  # the second worker starts once the first is ready
        while len(pids) < 2 and time.monotonic() < deadline:
            pids.add(server.request("POST", "/v1/pid", {})[2])
        assert len(pids) == 2
    finally:
        assert server.stop() == 0


# ---------------------------------------------------------------------------------------------
# The shared cache (ml_runtime.shared_cache): one store for every worker of a server


def test_workers_share_one_cache_and_a_new_entry_is_made_once(tmp_path: Path) -> None:
    server = Server(tmp_path, "--workers", "2")
    try:
        pids: set = set()
        deadline = time.monotonic() + 20  # the second worker starts once the first is ready
        while len(pids) < 2 and time.monotonic() < deadline:
            pids.add(server.request("POST", "/v1/pid", {})[2])
        assert len(pids) == 2
        # Four requests at once for a new entry that takes 0.5 s to make: the first worker makes
        # it, the other requests wait for it, whichever worker holds them.
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: server.request("POST", "/v1/remember", {"key": "k1", "delay": 0.5}),
                                    range(4)))
        assert all(status == 200 for status, _, _ in answers), answers
        bodies = [body for _, _, body in answers]
        assert len({b["made_by"] for b in bodies}) == 1
        assert sorted(b["cached"] for b in bodies) == [False, True, True, True]
        assert {b["answered_by"] for b in bodies} == pids  # both workers answered from one entry
        assert (server.metric("ml_shared_cache_misses_total"), server.metric("ml_shared_cache_hits_total")) == (1, 3)
        assert server.metric("ml_shared_cache_entries") == 1 and server.metric("ml_shared_cache_bytes") > 0
        status, _, body = server.request("POST", "/v1/remember", {"key": "../etc"})
        assert status == 422 and "not a cache key" in body["detail"], body
        cache_dirs = {server.request("POST", "/v1/environment", {"name": "ML_SHARED_CACHE_DIR"})[2] for _ in range(4)}
        assert len(cache_dirs) == 1
        (cache_dir,) = cache_dirs
        assert Path(cache_dir).is_dir()
    finally:
        assert server.stop() == 0
    assert not Path(cache_dir).exists()  # the server removes its store when it stops
