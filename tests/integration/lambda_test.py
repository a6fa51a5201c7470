"""The packaged iris model (and the probe's OpenAI stream) in AWS Lambda mode, against a local stand-in for the Lambda Runtime API.

The server finds $AWS_LAMBDA_RUNTIME_API, long-polls it for events instead of opening a port,
and answers them through the same routes as over HTTP; SIGTERM stops it cleanly.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from fakes.lambda_runtime_api import LambdaRuntimeApi, function_url_event

from ml_contract.package_layout import LAMBDA_RESPONSE_STREAMING_ENV

MODEL = Path("models.iris/iris/model.pex/__main__.py")
FLOWER = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
# The first invocation waits for the server and its worker to start (and PEX to set them up).
START_TIMEOUT = 180


class LambdaServer:
    def __init__(self, api: LambdaRuntimeApi, process: subprocess.Popen, log: Path) -> None:
        self.api, self.process, self.log = api, process, log

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-5000:]

    def alive(self) -> bool:
        return self.process.poll() is None

    def invoke(self, event: Any, timeout: float = 60) -> tuple[str, Any, dict[str, str], str]:
        """Queue one event; what the server posts back: (kind, payload, headers, request id)."""
        return self.api.invoke(event, timeout, self.alive, self.logs)


@contextlib.contextmanager
def lambda_server(package: Path, name: str, log: Path, **env: str) -> Iterator[LambdaServer]:
    """The packaged model's server in Lambda mode against a stand-in Runtime API, once it polls
    /next (its model is loaded and the runtime loop runs); killed with its workers afterwards."""
    assert package.is_file(), f"{package} is missing: the test needs the model packaged at the sandbox root"
    api = LambdaRuntimeApi(function_arn=f"arn:aws:lambda:us-east-1:0:function:{name}")
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(package)], env={**os.environ, "AWS_LAMBDA_RUNTIME_API": api.address, "ML_WORKERS": "1", **env},
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so teardown also reaches the workers
        )
    try:
        started = LambdaServer(api, process, log)
        api.wait_for_poll(START_TIMEOUT, started.alive, started.logs)
        yield started
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        api.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[LambdaServer]:
    with lambda_server(MODEL, "iris", tmp_path_factory.mktemp("lambda") / "server.log") as started:
        yield started


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


def test_the_same_json_rules_as_over_http(server: LambdaServer) -> None:
    # Out of the model's domain: iris refuses it (ValueError) rather than answer NaN.
    huge = json.dumps({"flowers": [{**FLOWER, "petal_length": 1.7976931348623157e308}]})
    kind, payload, _, _ = server.invoke(function_url_event("POST", "/v1/predict", huge))
    error = check_response(kind, payload, 422)
    assert error["error"] == "the model rejected the input" and "petal_length" in error["detail"]
    for body, fragment in [('{"flowers": [], "flowers": []}', "more than once"), ('{"flowers": NaN}', "NaN")]:
        kind, payload, _, _ = server.invoke(function_url_event("POST", "/v1/predict", body))
        assert fragment in check_response(kind, payload, 400)["detail"]
    kind, payload, _, _ = server.invoke(function_url_event("TRACE", "/metrics"))
    assert payload["statusCode"] == 405 and payload["headers"]["allow"] == "GET"


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
    assert server.api.init_error is None
    # The workers went with it (they share its process group).
    deadline = time.monotonic() + 5
    while True:
        try:
            os.killpg(server.process.pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "worker processes outlived the server"
        time.sleep(0.1)


PROBE = Path("tests.models.probe/probe/model.pex/__main__.py")


def test_an_openai_stream_in_lambdas_streaming_response_mode(tmp_path: Path) -> None:
    """The probe's generate, behind a Function URL in RESPONSE_STREAM mode: the OpenAI chunks,
    `data: [DONE]` last, posted in Lambda's streaming response mode."""
    with lambda_server(PROBE, "probe", tmp_path / "server.log", **{LAMBDA_RESPONSE_STREAMING_ENV: "1"}) as server:
        body = json.dumps({"model": "probe", "messages": [{"role": "user", "content": "hello"}], "stream": True})
        request_id = server.api.put(function_url_event("POST", "/v1/openai/v1/chat/completions", body,
                                                       {"content-type": "application/json"}))
        post = server.api.wait_for_result(request_id, 60, server.alive, server.logs)
    assert post.headers["lambda-runtime-function-response-mode"] == "streaming"
    prelude, _, events = post.body.partition(b"\0" * 8)
    assert json.loads(prelude)["headers"]["content-type"] == "text/event-stream"
    lines = [block.removeprefix(b"data: ") for block in events.split(b"\n\n") if block]
    assert lines[-1] == b"[DONE]" and not post.trailers
    chunks = [json.loads(line) for line in lines[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "user: hello"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


R_MODEL = Path("models.iris_forest/iris_forest/model.pex/__main__.py")


def test_an_r_model_in_lambda_mode(tmp_path: Path) -> None:
    """The R worker behind the same Lambda loop: a Function URL prediction, the model's own 422,
    and the OIP metadata route, as for a Python model (R from the machine: .ci/install-deps)."""
    with lambda_server(R_MODEL, "iris_forest", tmp_path / "server.log") as server:
        kind, payload, _, _ = server.invoke(function_url_event(
            "POST", "/v1/predict", json.dumps({"flowers": [FLOWER]}), {"content-type": "application/json"}))
        assert [p["species"] for p in check_response(kind, payload, 200)] == ["setosa"]
        kind, payload, _, _ = server.invoke(function_url_event(
            "POST", "/v1/predict", json.dumps({"flowers": [{**FLOWER, "petal_width": 1000}]})))
        assert "petal_width is 1000 cm" in check_response(kind, payload, 422)["detail"]
        kind, payload, _, _ = server.invoke(function_url_event("GET", "/v2/models/iris_forest"))
        assert check_response(kind, payload, 200)["name"] == "iris_forest"
