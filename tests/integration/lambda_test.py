"""The packaged iris model in AWS Lambda mode, against a local stand-in for the Lambda Runtime API.

The server finds $AWS_LAMBDA_RUNTIME_API, long-polls it for events instead of opening a port,
and answers them through the same routes as over HTTP; SIGTERM stops it cleanly.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import signal
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

MODEL = Path("models.iris/iris/model.pex/__main__.py")
PREFIX = "/2018-06-01/runtime"
FLOWER = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
# The first invocation waits for the server and its worker to start (and PEX to set them up).
START_TIMEOUT = 180


class RuntimeApi:
    """What Lambda offers a custom runtime: /next hands out queued events, the rest is recorded."""

    def __init__(self) -> None:
        self.events: queue.Queue = queue.Queue()
        self.results: dict[str, tuple[str, Any, dict[str, str]]] = {}
        self.recorded = threading.Condition()
        self.polls = 0
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                if self.path != f"{PREFIX}/invocation/next":
                    return self._reply(404)
                with api.recorded:
                    api.polls += 1
                    api.recorded.notify_all()
                item = api.events.get()
                if item is None:  # the test is over: end the long poll
                    self.close_connection = True
                    return
                request_id, event = item
                body = json.dumps(event).encode()
                self.send_response(200)
                self.send_header("Lambda-Runtime-Aws-Request-Id", request_id)
                self.send_header("Lambda-Runtime-Deadline-Ms", str(int((time.time() + 60) * 1000)))
                self.send_header("Lambda-Runtime-Invoked-Function-Arn", "arn:aws:lambda:us-east-1:0:function:iris")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                parts = self.path[len(PREFIX):].strip("/").split("/")
                if len(parts) == 3 and parts[0] == "invocation" and parts[2] in ("response", "error"):
                    key, kind = parts[1], parts[2]
                elif parts == ["init", "error"]:
                    key, kind = "init", "error"
                else:
                    return self._reply(404)
                with api.recorded:
                    api.results[key] = (kind, body, {k.lower(): v for k, v in self.headers.items()})
                    api.recorded.notify_all()
                self._reply(202)

            def _reply(self, status: int) -> None:
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        for _ in range(4):
            self.events.put(None)
        self.server.shutdown()
        self.server.server_close()


class LambdaServer:
    def __init__(self, api: RuntimeApi, process: subprocess.Popen, log: Path) -> None:
        self.api, self.process, self.log = api, process, log

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-5000:]

    def invoke(self, event: Any, timeout: float = 60) -> tuple[str, Any, dict[str, str], str]:
        """Queue one event; what the server posts back: (kind, payload, headers, request id)."""
        request_id = str(uuid.uuid4())
        self.api.events.put((request_id, event))
        deadline = time.monotonic() + timeout
        with self.api.recorded:
            while request_id not in self.api.results:
                assert self.process.poll() is None, f"the server exited ({self.process.returncode}):\n{self.logs()}"
                assert time.monotonic() < deadline, f"no answer for {request_id} in {timeout} s:\n{self.logs()}"
                self.api.recorded.wait(0.5)
            kind, payload, headers = self.api.results.pop(request_id)
            return kind, payload, headers, request_id


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[LambdaServer]:
    assert MODEL.is_file(), f"{MODEL} is missing: the test needs models/iris:iris packaged at the sandbox root"
    api = RuntimeApi()
    log = tmp_path_factory.mktemp("lambda") / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(MODEL)],
            env={**os.environ, "AWS_LAMBDA_RUNTIME_API": api.address, "ML_WORKERS": "1"},
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so teardown also reaches the workers
        )
    try:
        started = LambdaServer(api, process, log)
        with api.recorded:  # polling /next means the model is loaded and the runtime loop runs
            deadline = time.monotonic() + START_TIMEOUT
            while not api.polls:
                assert process.poll() is None, f"the server exited ({process.returncode}):\n{started.logs()}"
                assert time.monotonic() < deadline, f"the server did not poll /next:\n{started.logs()}"
                api.recorded.wait(0.5)
        yield started
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        api.close()


def function_url_event(method: str, path: str, body: str = "", headers: dict[str, str] | None = None,
                       base64_body: bool = False) -> dict[str, Any]:
    return {
        "version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": "",
        "headers": {"host": "abc.lambda-url.us-east-1.on.aws", **(headers or {})},
        "requestContext": {"http": {"method": method, "path": path, "protocol": "HTTP/1.1",
                                    "sourceIp": "127.0.0.1"}, "stage": "$default", "requestId": "x"},
        "body": body, "isBase64Encoded": base64_body,
    }


def check_response(kind: str, payload: Any, status: int) -> Any:
    assert kind == "response", payload
    assert set(payload) == {"statusCode", "headers", "body", "isBase64Encoded"}
    assert payload["statusCode"] == status, payload
    assert payload["isBase64Encoded"] is False
    assert payload["headers"]["content-type"] == "application/json"
    return json.loads(payload["body"])


def test_function_url_predict(server: LambdaServer) -> None:
    event = function_url_event("POST", "/v1/predict", json.dumps({"flowers": [FLOWER]}),
                               {"content-type": "application/json"})
    kind, payload, _, request_id = server.invoke(event)
    predictions = check_response(kind, payload, 200)
    assert [p["species"] for p in predictions] == ["setosa"]
    assert payload["headers"]["x-request-id"] == request_id  # the Lambda request id, as none was sent


def test_http_api_v2_health(server: LambdaServer) -> None:
    event = {
        "version": "2.0", "routeKey": "GET /v2/health/ready", "rawPath": "/v2/health/ready",
        "rawQueryString": "", "headers": {"x-request-id": "from-the-client"},
        "requestContext": {"apiId": "api", "http": {"method": "GET", "path": "/v2/health/ready"},
                           "stage": "$default"},
        "isBase64Encoded": False,
    }
    kind, payload, _, _ = server.invoke(event)
    assert check_response(kind, payload, 200) == {"ready": True}
    assert payload["headers"]["x-request-id"] == "from-the-client"


def test_rest_v1_predict_with_base64_body(server: LambdaServer) -> None:
    event = {
        "resource": "/{proxy+}", "path": "/v1/predict", "httpMethod": "POST",
        "headers": {"Content-Type": "application/json"},
        "multiValueHeaders": {"Content-Type": ["application/json"]},
        "queryStringParameters": None, "multiValueQueryStringParameters": None,
        "requestContext": {"path": "/prod/v1/predict", "stage": "prod", "httpMethod": "POST"},
        "body": base64.b64encode(json.dumps({"flowers": [FLOWER, FLOWER]}).encode()).decode(),
        "isBase64Encoded": True,
    }
    kind, payload, _, _ = server.invoke(event)
    assert [p["species"] for p in check_response(kind, payload, 200)] == ["setosa", "setosa"]


def test_bad_json_is_a_400(server: LambdaServer) -> None:
    event = function_url_event("POST", "/v1/predict", "{not json", {"content-type": "application/json"})
    kind, payload, _, request_id = server.invoke(event)
    error = check_response(kind, payload, 400)
    assert error["error"] == "malformed JSON"
    assert error["request_id"] == request_id


def test_invalid_request_is_a_422(server: LambdaServer) -> None:
    event = function_url_event("POST", "/v1/predict", json.dumps({"flowers": [{"sepal_length": 5.1}]}))
    kind, payload, _, _ = server.invoke(event)
    assert check_response(kind, payload, 422)["error"] == "invalid request"


def test_unknown_route_is_a_404(server: LambdaServer) -> None:
    kind, payload, _, _ = server.invoke(function_url_event("GET", "/nowhere"))
    assert "POST /v1/predict" in check_response(kind, payload, 404)["routes"]


def test_unsupported_event_is_an_invocation_error(server: LambdaServer) -> None:
    kind, payload, headers, _ = server.invoke({"Records": [{"eventSource": "aws:sqs", "body": "{}"}]})
    assert kind == "error", payload
    assert payload["errorType"] == "UnsupportedEvent"
    assert "Function URL or API Gateway" in payload["errorMessage"]
    assert headers.get("lambda-runtime-function-error-type") == "UnsupportedEvent"
    # and the server goes on to the next event
    kind, payload, _, _ = server.invoke(function_url_event("GET", "/v2/health/live"))
    assert check_response(kind, payload, 200) == {"live": True}


def test_sigterm_stops_the_server(server: LambdaServer) -> None:
    """Last in this module: the server is gone afterwards."""
    server.process.send_signal(signal.SIGTERM)
    try:
        returncode = server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the server did not exit within 10 s of SIGTERM:\n{server.logs()}")
    assert returncode == 0, server.logs()
    assert "init" not in server.api.results
    # The workers went with it (they share its process group).
    deadline = time.monotonic() + 5
    while True:
        try:
            os.killpg(server.process.pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "worker processes outlived the server"
        time.sleep(0.1)
