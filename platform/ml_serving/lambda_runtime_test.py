from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any, Optional

import pytest
from fakes.lambda_runtime_api import LambdaRuntimeApi

from ml_contract.package_layout import LAMBDA_RESPONSE_STREAMING_ENV
from ml_serving import lambda_runtime
from ml_http.server import Request, Response
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

class EchoApp:
    async def handle(self, request: Request, timeout: Optional[float] = None) -> Response:
        if request.path == "/slow":
            await asyncio.sleep(30)
        if request.path in ("/stream", "/broken-stream"):
            async def items():
                for n in range(3):
                    await asyncio.sleep(0.2)
                    if n == 2 and request.path == "/broken-stream":
                        raise RuntimeError("lost the model")
                    yield b'{"n":%d}\n' % n

            return Response(200, content_type="application/x-ndjson", stream=items())
        if request.path == "/big":  # over Lambda's 6 MB buffered response
            return Response.json(200, {"masks": "x" * (7 * 2**20)})
        return Response.json(200, {"method": request.method, "path": request.path},
                             headers={"x-request-id": request.headers["x-request-id"]})


@pytest.fixture
def runtime_api():
    # Chunked here (the integration tests get Content-Length): the client takes both.
    with LambdaRuntimeApi(chunked=True) as api:
        yield api


async def _posts(api: LambdaRuntimeApi, count: int) -> list[tuple[str, Any, Any]]:
    """The next `count` posts, in order, as (path, error type header, JSON body)."""
    loop = asyncio.get_running_loop()
    posts = [await loop.run_in_executor(None, api.next_post, 10) for _ in range(count)]
    return [(post.path, post.error_type, post.payload) for post in posts]


def _answered(api: LambdaRuntimeApi, count: int) -> list[tuple[str, Any, Any]]:
    """The runtime loop over EchoApp until it has posted `count` results; those posts."""
    async def scenario() -> list[tuple[str, Any, Any]]:
        task = asyncio.ensure_future(lambda_runtime.run(EchoApp(), api.address))  # type: ignore[arg-type]
        posts = await _posts(api, count)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return posts

    return asyncio.run(scenario())


def test_run_answers_events_and_survives_bad_ones(runtime_api: LambdaRuntimeApi, monkeypatch) -> None:
    monkeypatch.setattr(lambda_runtime, "DEADLINE_MARGIN", 0.0)
    runtime_api.drop_next = 1  # a broken connection is retried, not fatal
    runtime_api.put(FUNCTION_URL_EVENT, "id-1")
    runtime_api.put({"Records": []}, "id-2")
    runtime_api.put({**HTTP_API_V2_EVENT, "rawPath": "/slow"}, "id-3", deadline_in=0.3)
    runtime_api.put(REST_V1_EVENT, "id-4")

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
    assert runtime_api.drop_next == 0  # the dropped poll happened, and was retried
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


def test_a_stream_is_answered_whole_in_buffered_mode(runtime_api: LambdaRuntimeApi) -> None:
    runtime_api.put({**FUNCTION_URL_EVENT, "rawPath": "/stream"}, "id-s")
    ((path, _, result),) = _answered(runtime_api, 1)
    assert path == "/2018-06-01/runtime/invocation/id-s/response"
    assert result["statusCode"] == 200 and result["body"] == '{"n":0}\n{"n":1}\n{"n":2}\n'


def test_streaming_mode_sends_the_prelude_then_each_part_as_it_comes(runtime_api: LambdaRuntimeApi,
                                                                     monkeypatch) -> None:
    monkeypatch.setenv(LAMBDA_RESPONSE_STREAMING_ENV, "1")
    runtime_api.put({**FUNCTION_URL_EVENT, "rawPath": "/stream"}, "id-s")
    runtime_api.put({**FUNCTION_URL_EVENT, "rawPath": "/broken-stream"}, "id-b")
    runtime_api.put(FUNCTION_URL_EVENT, "id-p")  # a plain response, streamed in one part

    async def scenario() -> list:
        task = asyncio.ensure_future(lambda_runtime.run(EchoApp(), runtime_api.address))  # type: ignore[arg-type]
        posts = [await asyncio.get_running_loop().run_in_executor(None, runtime_api.next_post, 10) for _ in range(3)]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return posts

    streamed, broken, plain = asyncio.run(scenario())
    for post in (streamed, broken, plain):
        assert post.headers["lambda-runtime-function-response-mode"] == "streaming"
        assert post.headers["content-type"] == "application/vnd.awslambda.http-integration-response"
    prelude, _, body = streamed.body.partition(b"\0" * 8)
    assert json.loads(prelude) == {"statusCode": 200, "headers": {"content-type": "application/x-ndjson"}}
    assert body == b'{"n":0}\n{"n":1}\n{"n":2}\n' and not streamed.trailers
    # The parts arrived as they were made (0.2 s apart), not all at the end.
    assert streamed.chunk_times[-1] - streamed.chunk_times[1] > 0.3, streamed.chunk_times
    # A failure once the body is under way: Lambda's error trailers.
    assert broken.body.partition(b"\0" * 8)[2] == b'{"n":0}\n{"n":1}\n'
    assert broken.trailers["lambda-runtime-function-error-type"] == "RuntimeError"
    assert json.loads(base64.b64decode(broken.trailers["lambda-runtime-function-error-body"]))["errorMessage"] == "lost the model"
    prelude, _, body = plain.body.partition(b"\0" * 8)
    assert json.loads(prelude)["statusCode"] == 200 and json.loads(body) == {"method": "POST", "path": "/v1/predict"}


def test_report_init_error(runtime_api: LambdaRuntimeApi) -> None:
    asyncio.run(lambda_runtime.report_init_error(runtime_api.address, "ModelLoadError", "no artifacts"))
    post = runtime_api.next_post(timeout=5)
    assert (post.path, post.error_type, post.payload) == (
        "/2018-06-01/runtime/init/error", "ModelLoadError",
        {"errorType": "ModelLoadError", "errorMessage": "no artifacts", "stackTrace": []},
    )
    assert runtime_api.init_error == post


def test_a_response_over_lambdas_limit_is_a_413_that_says_why(runtime_api: LambdaRuntimeApi) -> None:
    """Lambda refuses a buffered response over 6 MB (the stand-in too, as Lambda does): the client
    would get a bare 502. The runtime answers 413 with the reason and what to do instead."""
    runtime_api.put({**FUNCTION_URL_EVENT, "rawPath": "/big"}, "id-big")
    ((path, _, result),) = _answered(runtime_api, 1)
    assert path == "/2018-06-01/runtime/invocation/id-big/response" and runtime_api.rejected == []
    assert result["statusCode"] == 413
    error = json.loads(result["body"])
    assert "more than Lambda's 6,291,456-byte limit" in error["error"] and "RESPONSE_STREAM" in error["error"]
    assert error["request_id"] == result["headers"]["x-request-id"]


def test_an_application_load_balancer_event() -> None:
    """What an ALB's Lambda target group sends (models under <model>.ml.<domain> on lambda)."""
    event = {"requestContext": {"elb": {"targetGroupArn": "arn:aws:elasticloadbalancing:eu-west-1:1:targetgroup/ml-iris-v1/x"}},
             "httpMethod": "POST", "path": "/v1/predict", "queryStringParameters": {"explain": "1"},
             "headers": {"host": "iris.ml.example.com", "content-type": "application/json"},
             "body": "eyJhIjogMX0=", "isBase64Encoded": True}
    request = lambda_runtime.event_to_request(event, "id-alb")
    assert (request.method, request.path, request.body) == ("POST", "/v1/predict", b'{"a": 1}')
    assert request.query == "explain=1" and request.headers["host"] == "iris.ml.example.com"
    response = lambda_runtime.to_lambda_response(Response.json(200, {"ok": True}))
    assert {"statusCode", "headers", "body", "isBase64Encoded"} <= set(response)  # what ALB requires
