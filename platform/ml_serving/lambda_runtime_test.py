from __future__ import annotations

import asyncio
import base64
import json
import queue
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional

import pytest

from ml_serving import lambda_runtime
from ml_serving.http import Request, Response
from ml_serving.lambda_runtime import UnsupportedEvent, event_to_request, to_lambda_response

PREDICT = {"flowers": [{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}]}

# Shapes as AWS documents them (trimmed to what the mapping reads, plus some noise).
FUNCTION_URL_EVENT = {
    "version": "2.0",
    "routeKey": "$default",
    "rawPath": "/v1/predict",
    "rawQueryString": "explain=1&x=a%20b",
    "headers": {"content-type": "application/json", "host": "abc.lambda-url.us-east-1.on.aws",
                "x-forwarded-for": "203.0.113.7"},
    "queryStringParameters": {"explain": "1", "x": "a b"},
    "requestContext": {"accountId": "anonymous", "domainName": "abc.lambda-url.us-east-1.on.aws",
                       "http": {"method": "POST", "path": "/v1/predict", "protocol": "HTTP/1.1",
                                "sourceIp": "203.0.113.7", "userAgent": "curl/8.0"},
                       "requestId": "f00", "stage": "$default", "timeEpoch": 1700000000000},
    "body": json.dumps(PREDICT),
    "isBase64Encoded": False,
}

HTTP_API_V2_EVENT = {
    "version": "2.0",
    "routeKey": "GET /v2/health/ready",
    "rawPath": "/v2/health/ready",
    "rawQueryString": "",
    "cookies": ["a=1", "b=2"],
    "headers": {"x-request-id": "client-chosen-id", "accept": "application/json"},
    "requestContext": {"apiId": "api", "http": {"method": "GET", "path": "/v2/health/ready"},
                       "stage": "$default"},
    "isBase64Encoded": False,
}

REST_V1_EVENT = {
    "resource": "/{proxy+}",
    "path": "/v1/predict",
    "httpMethod": "POST",
    "headers": {"Content-Type": "application/json", "Accept": "text/plain"},
    "multiValueHeaders": {"Content-Type": ["application/json"], "Accept": ["text/plain", "application/json"]},
    "queryStringParameters": {"tag": "b"},
    "multiValueQueryStringParameters": {"tag": ["a", "b"]},
    "pathParameters": {"proxy": "v1/predict"},
    "requestContext": {"resourcePath": "/{proxy+}", "httpMethod": "POST", "path": "/prod/v1/predict",
                       "stage": "prod", "requestId": "r1"},
    "body": base64.b64encode(json.dumps(PREDICT).encode()).decode(),
    "isBase64Encoded": True,
}


def test_function_url_event() -> None:
    request = event_to_request(FUNCTION_URL_EVENT, "lambda-id-1")
    assert request == Request(
        method="POST", path="/v1/predict", query="explain=1&x=a%20b",
        headers={**FUNCTION_URL_EVENT["headers"], "x-request-id": "lambda-id-1"},
        body=json.dumps(PREDICT).encode(),
    )


def test_http_api_v2_event_keeps_the_clients_request_id_and_cookies() -> None:
    request = event_to_request(HTTP_API_V2_EVENT, "lambda-id-2")
    assert (request.method, request.path, request.query, request.body) == ("GET", "/v2/health/ready", "", b"")
    assert request.headers["x-request-id"] == "client-chosen-id"
    assert request.headers["cookie"] == "a=1; b=2"


def test_rest_v1_event_with_base64_body() -> None:
    request = event_to_request(REST_V1_EVENT, "lambda-id-3")
    assert (request.method, request.path) == ("POST", "/v1/predict")  # not the stage-prefixed path
    assert json.loads(request.body) == PREDICT
    assert request.query == "tag=a&tag=b"
    assert request.headers == {"content-type": "application/json", "accept": "text/plain, application/json",
                               "x-request-id": "lambda-id-3"}


def test_payload_1_0_event_without_optional_fields() -> None:
    event = {"version": "1.0", "httpMethod": "get", "path": "/metrics", "headers": None,
             "multiValueHeaders": None, "queryStringParameters": {"a": "1"},
             "multiValueQueryStringParameters": None, "body": None, "isBase64Encoded": False}
    request = event_to_request(event, "id")
    assert (request.method, request.path, request.query, request.body) == ("GET", "/metrics", "a=1", b"")
    assert request.headers == {"x-request-id": "id"}


def test_binary_request_body() -> None:
    event = {**FUNCTION_URL_EVENT, "headers": {"content-type": "application/octet-stream"},
             "body": base64.b64encode(b"\x00\xff\x10").decode(), "isBase64Encoded": True}
    assert event_to_request(event, "id").body == b"\x00\xff\x10"


@pytest.mark.parametrize("event", [
    {},
    [],
    "POST /v1/predict",
    {"Records": [{"eventSource": "aws:sqs", "body": "{}"}]},
    {"version": "2.0", "requestContext": {"http": {"method": "GET"}}},  # no rawPath
    {"version": "2.0", "rawPath": "/v1/predict", "requestContext": {"stage": "$default"}},  # no http
    {**FUNCTION_URL_EVENT, "body": {"flowers": []}},  # body must be a string
])
def test_unsupported_events(event: Any) -> None:
    with pytest.raises(UnsupportedEvent):
        event_to_request(event, "id")


def test_unsupported_event_message_names_what_is_expected() -> None:
    with pytest.raises(UnsupportedEvent, match=r"Function URL or API Gateway.*keys: Records"):
        event_to_request({"Records": []}, "id")


def test_json_response_is_text() -> None:
    response = Response.json(422, {"error": "invalid request", "detail": "é"},
                             headers={"x-request-id": "r", "retry-after": "1"})
    assert to_lambda_response(response) == {
        "statusCode": 422,
        "headers": {"content-type": "application/json", "x-request-id": "r", "retry-after": "1"},
        "body": response.body.decode(),
        "isBase64Encoded": False,
    }


def test_text_response_is_text() -> None:
    result = to_lambda_response(Response(200, b"ml_requests_total 1\n", content_type="text/plain; version=0.0.4"))
    assert (result["body"], result["isBase64Encoded"]) == ("ml_requests_total 1\n", False)
    assert result["headers"] == {"content-type": "text/plain; version=0.0.4"}


@pytest.mark.parametrize("response", [
    Response(200, b"\x89PNG\x00\xff", content_type="application/octet-stream"),
    Response(200, b"\xff\xfe not utf-8", content_type="application/json"),
])
def test_binary_response_is_base64(response: Response) -> None:
    result = to_lambda_response(response)
    assert result["isBase64Encoded"] is True
    assert base64.b64decode(result["body"]) == response.body
    assert result["headers"]["content-type"] == response.content_type


# The loop itself, against a stand-in Runtime API and a stand-in app.

class FakeRuntimeApi:
    def __init__(self) -> None:
        self.events: queue.Queue = queue.Queue()
        self.posts: queue.Queue = queue.Queue()
        self.drop_next = 0  # how many /next polls to answer by closing the connection
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                assert self.path == "/2018-06-01/runtime/invocation/next"
                if api.drop_next:
                    api.drop_next -= 1
                    self.close_connection = True
                    return
                request_id, deadline_ms, event = api.events.get()
                body = json.dumps(event).encode()
                self.send_response(200)
                self.send_header("Lambda-Runtime-Aws-Request-Id", request_id)
                self.send_header("Lambda-Runtime-Deadline-Ms", str(deadline_ms))
                # Chunked here (the integration test sends Content-Length): the client takes both.
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for chunk in (body[:10], body[10:], b""):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                api.posts.put((self.path, self.headers.get("Lambda-Runtime-Function-Error-Type"), json.loads(body)))
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def queue(self, request_id: str, event: Any, deadline_in: float = 60.0) -> None:
        self.events.put((request_id, int((time.time() + deadline_in) * 1000), event))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class EchoApp:
    async def handle(self, request: Request, timeout: Optional[float] = None) -> Response:
        if request.path == "/slow":
            await asyncio.sleep(30)
        return Response.json(200, {"method": request.method, "path": request.path},
                             headers={"x-request-id": request.headers["x-request-id"]})


@pytest.fixture
def runtime_api():
    api = FakeRuntimeApi()
    yield api
    api.close()


async def _posts(api: FakeRuntimeApi, count: int) -> list[tuple[str, Any, Any]]:
    loop = asyncio.get_running_loop()
    return [await loop.run_in_executor(None, api.posts.get, True, 10) for _ in range(count)]


def test_run_answers_events_and_survives_bad_ones(runtime_api: FakeRuntimeApi, monkeypatch) -> None:
    monkeypatch.setattr(lambda_runtime, "DEADLINE_MARGIN", 0.0)
    runtime_api.drop_next = 1  # a broken connection is retried, not fatal
    runtime_api.queue("id-1", FUNCTION_URL_EVENT)
    runtime_api.queue("id-2", {"Records": []})
    runtime_api.queue("id-3", {**HTTP_API_V2_EVENT, "rawPath": "/slow"}, deadline_in=0.3)
    runtime_api.queue("id-4", REST_V1_EVENT)

    async def scenario() -> list[tuple[str, Any, Any]]:
        task = asyncio.ensure_future(lambda_runtime.run(EchoApp(), runtime_api.address))  # type: ignore[arg-type]
        posts = await _posts(runtime_api, 4)
        started = time.monotonic()
        task.cancel()  # while it long-polls /next: must end at once
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - started < 1
        return posts

    posts = asyncio.run(scenario())
    assert posts[0] == ("/2018-06-01/runtime/invocation/id-1/response", None, {
        "statusCode": 200, "isBase64Encoded": False,
        "headers": {"content-type": "application/json", "x-request-id": "id-1"},
        "body": '{"method":"POST","path":"/v1/predict"}',
    })
    path, error_type, error = posts[1]
    assert (path, error_type, error["errorType"]) == ("/2018-06-01/runtime/invocation/id-2/error",
                                                      "UnsupportedEvent", "UnsupportedEvent")
    assert "Function URL or API Gateway" in error["errorMessage"]
    path, _, result = posts[2]
    assert (path, result["statusCode"]) == ("/2018-06-01/runtime/invocation/id-3/response", 504)
    assert json.loads(result["body"])["request_id"] == "client-chosen-id"
    assert posts[3][0] == "/2018-06-01/runtime/invocation/id-4/response"
    assert posts[3][2]["headers"]["x-request-id"] == "id-4"


def test_report_init_error(runtime_api: FakeRuntimeApi) -> None:
    asyncio.run(lambda_runtime.report_init_error(runtime_api.address, "ModelLoadError", "no artifacts"))
    assert runtime_api.posts.get(timeout=5) == (
        "/2018-06-01/runtime/init/error", "ModelLoadError",
        {"errorType": "ModelLoadError", "errorMessage": "no artifacts", "stackTrace": []},
    )
