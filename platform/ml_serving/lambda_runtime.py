"""AWS Lambda front end: the model's HTTP routes, fed by the Lambda Runtime API.

In a Lambda execution environment nothing may listen on a port. Instead the server long-polls
http://$AWS_LAMBDA_RUNTIME_API/2018-06-01/runtime/invocation/next for one event at a time,
turns it into the `Request` the HTTP server would have parsed and runs it through
`ModelApp.handle`, so routes, validation, errors, metrics and the access log are the same in
both modes. The `Response` goes back in the proxy-integration shape that Function URLs and
API Gateway turn into an HTTP response.

The client is asyncio streams plus httptools' response parser, not http.client in a thread:
main.py cancels this task on SIGTERM while a long poll is open, and a thread blocked in recv()
can be neither cancelled nor joined, so the process would hang on its way out.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any, AsyncIterator, Optional, Union
from urllib.parse import urlencode, urlsplit

import httptools

from ml_contract.model_settings import LAMBDA_MAX_PAYLOAD_BYTES
from ml_contract.package_layout import LAMBDA_RESPONSE_STREAMING_ENV
from ml_http.server import Request, Response
from ml_serving import streams

if TYPE_CHECKING:
    from ml_serving.app import ModelApp

logger = logging.getLogger("ml_serving.lambda")

# Answer a little before Lambda's deadline: an invocation that times out makes Lambda discard the
# execution environment, and the next request then pays for loading the model again.
DEADLINE_MARGIN = 0.5
# Lambda's streaming response mode (custom runtimes): the body's content type, the end of its
# prelude, and the trailers that say a stream failed after it started.
_STREAMED_RESPONSE_TYPE = "application/vnd.awslambda.http-integration-response"
_PRELUDE_END = b"\0" * 8
_ERROR_TYPE_TRAILER = "Lambda-Runtime-Function-Error-Type"
_ERROR_BODY_TRAILER = "Lambda-Runtime-Function-Error-Body"
_TEXT_TYPES = ("application/json", streams.CONTENT_TYPES[streams.NDJSON], "application/xml", "application/javascript")


class UnsupportedEvent(ValueError):
    """The event is not an HTTP request from a Function URL or API Gateway."""


class RuntimeApiError(Exception):
    """The Runtime API answered something other than what its documentation promises."""


def event_to_request(event: Any, request_id: str) -> Request:
    """The Request an HTTP client would have sent, from a Function URL / API Gateway event."""
    if not isinstance(event, dict):
        raise UnsupportedEvent(f"expected an HTTP event (a JSON object), got {type(event).__name__}")
    context = event.get("requestContext")
    http = context.get("http") if isinstance(context, dict) else None
    if isinstance(http, dict) and "rawPath" in event:  # Function URL, HTTP API payload 2.0
        method, path, query = http.get("method", ""), event["rawPath"], event.get("rawQueryString") or ""
        headers = {k.lower(): v for k, v in (event.get("headers") or {}).items()}
        if event.get("cookies"):  # payload 2.0 moves Cookie headers into a list of their own
            headers["cookie"] = "; ".join(event["cookies"])
    elif "httpMethod" in event and "path" in event:  # REST API, HTTP API payload 1.0
        method, path = event["httpMethod"], event["path"]
        # REST APIs keep the client's header case; `headers` has only the last of repeated ones.
        headers = {k.lower(): v for k, v in (event.get("headers") or {}).items()}
        for name, values in (event.get("multiValueHeaders") or {}).items():
            if values:
                headers[name.lower()] = ", ".join(values)
        multi = event.get("multiValueQueryStringParameters")
        query = urlencode(multi, doseq=True) if multi else urlencode(event.get("queryStringParameters") or {})
    else:
        keys = ", ".join(sorted(map(str, event))[:10]) or "none"
        raise UnsupportedEvent(
            "expected an HTTP event from a Lambda Function URL or API Gateway (payload 2.0 with "
            f"requestContext.http and rawPath, or REST/1.0 with httpMethod and path); its keys: {keys}"
        )
    body = event.get("body") or ""
    if not isinstance(body, str):
        raise UnsupportedEvent(f"the event's body must be a string, got {type(body).__name__}")
    raw = base64.b64decode(body, validate=True) if event.get("isBase64Encoded") else body.encode()
    headers.setdefault("x-request-id", request_id)
    return Request(method=str(method).upper(), path=path or "/", query=query, headers=headers, body=raw)


def to_lambda_response(response: Response) -> dict[str, Any]:
    """The proxy-integration result Function URLs and API Gateway turn into an HTTP response."""
    headers = {"content-type": response.content_type, **(response.headers or {})}
    media_type = response.content_type.split(";")[0].strip().lower()
    if media_type.startswith("text/") or media_type in _TEXT_TYPES or media_type.endswith("+json"):
        try:
            return {"statusCode": response.status, "headers": headers,
                    "body": response.body.decode("utf-8"), "isBase64Encoded": False}
        except UnicodeDecodeError:
            pass
    return {"statusCode": response.status, "headers": headers,
            "body": base64.b64encode(response.body).decode("ascii"), "isBase64Encoded": True}


async def run(app: "ModelApp", api: str) -> None:
    """Answer invocations, one at a time as Lambda delivers them, until cancelled."""
    client = _RuntimeClient(api)
    failures = 0
    try:
        while True:
            try:
                await _invoke_next(app, client)
                failures = 0
            except (OSError, httptools.HttpParserError, RuntimeApiError) as e:
                # Worth waiting out: if the process exited instead, Lambda would discard the whole
                # execution environment and the next request would load the model again.
                client.close()
                delay = min(2.0, 0.05 * 2**failures)
                failures += 1
                _log(logging.ERROR, "lambda_runtime_api_error", error=f"{type(e).__name__}: {e}", retry_in=delay)
                await asyncio.sleep(delay)
    finally:
        client.close()


async def report_init_error(api: str, error_type: str, message: str) -> None:
    """Tell Lambda why initialisation failed (e.g. the model did not load), rather than time out."""
    client = _RuntimeClient(api)
    try:
        await client.post("/init/error", _error(error_type, message), error_type)
    finally:
        client.close()


async def _invoke_next(app: "ModelApp", client: "_RuntimeClient") -> None:
    status, headers, body = await client.request("GET", "/invocation/next")
    request_id = headers.get("lambda-runtime-aws-request-id")
    if status != 200 or not request_id:
        raise RuntimeApiError(f"GET /invocation/next answered {status} {body[:200]!r}")
    try:
        request = event_to_request(json.loads(body), request_id)
    except Exception as e:  # whatever the event holds, the loop must go on to the next one
        kind = "UnsupportedEvent" if isinstance(e, UnsupportedEvent) else "InvalidEvent"
        _log(logging.WARNING, "lambda_bad_event", request_id=request_id, error=f"{kind}: {e}")
        await client.post(f"/invocation/{request_id}/error", _error(kind, str(e)), kind)
        return
    deadline_ms = headers.get("lambda-runtime-deadline-ms", "")
    response = await _handle(app, request, int(deadline_ms) / 1000 if deadline_ms.isdigit() else None)
    if client.streaming:
        await client.post_stream(f"/invocation/{request_id}/response", response)
        return
    if response.stream is not None:
        # Buffered mode: the whole stream (every item, and an error event if it failed) in one
        # response.
        response.body = b"".join([part async for part in response.stream])
        response.stream = None
    await client.post(f"/invocation/{request_id}/response", within_payload_limit(to_lambda_response(response), request))


def within_payload_limit(result: dict[str, Any], request: Request) -> bytes:
    """`result`, encoded, or a 413 saying why if it is over Lambda's buffered response limit:
    Lambda would refuse the post and the client would get a bare 502, the reason only in logs."""
    encoded = json.dumps(result).encode()
    size = len(encoded)
    if size <= LAMBDA_MAX_PAYLOAD_BYTES:
        return encoded
    request_id = request.headers["x-request-id"]
    _log(logging.WARNING, "lambda_response_too_large", request_id=request_id, path=request.path, bytes=size)
    return json.dumps(to_lambda_response(Response.json(413, {
        "error": f"the response is {size:,} bytes, more than Lambda's {LAMBDA_MAX_PAYLOAD_BYTES:,}-byte limit "
                 f"for a buffered response: ask for less (a smaller batch), or deploy with the environment's "
                 f"function_url_invoke_mode RESPONSE_STREAM",
        "request_id": request_id}, headers={"x-request-id": request_id}))).encode()


async def _handle(app: "ModelApp", request: Request, deadline: Optional[float]) -> Response:
    if deadline is None:
        return await app.handle(request)
    remaining = max(0.0, deadline - time.time() - DEADLINE_MARGIN)
    try:
        # The app's own limit answers 504, replaces the stuck worker and logs the request;
        # wait_for only guards the time a request could spend queued before that.
        return await asyncio.wait_for(app.handle(request, timeout=remaining),
                                      remaining + DEADLINE_MARGIN / 2)
    except asyncio.TimeoutError:
        request_id = request.headers["x-request-id"]
        _log(logging.WARNING, "lambda_deadline", request_id=request_id, path=request.path)
        return Response.json(504, {"error": "the model did not answer before the Lambda deadline",
                                   "request_id": request_id}, headers={"x-request-id": request_id})


def _error(error_type: str, message: str) -> dict[str, Any]:
    return {"errorType": error_type, "errorMessage": message, "stackTrace": []}


def _log(level: int, event: str, **fields: Any) -> None:
    logger.log(level, json.dumps({"event": event, **fields}))


class _RuntimeClient:
    """HTTP/1.1 to the Runtime API over one kept-alive connection."""

    def __init__(self, api: str, streaming: Optional[bool] = None) -> None:
        url = urlsplit(f"http://{api}")
        self.api, self.host, self.port = api, url.hostname, url.port or 80
        self._streams: Optional[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = None
        # Lambda's streaming response mode, for a Function URL that streams (the deploy says so).
        self.streaming = (os.environ.get(LAMBDA_RESPONSE_STREAMING_ENV) == "1") if streaming is None else streaming

    async def request(self, method: str, path: str, body: Union[bytes, AsyncIterator[bytes]] = b"",
                      headers: Optional[dict[str, str]] = None) -> tuple[int, dict[str, str], bytes]:
        """One request; a body that is an async iterator is sent chunked, each part as it comes
        (an exception from it ends the body with Lambda's error trailers)."""
        if self._streams is None:
            self._streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._streams
        streamed = not isinstance(body, bytes)
        head = [f"{method} /2018-06-01/runtime{path} HTTP/1.1", f"host: {self.api}",
                "transfer-encoding: chunked" if streamed else f"content-length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        message = _Message()
        parser = httptools.HttpResponseParser(message)
        try:
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (b"" if streamed else body))
            if streamed:
                await _send_chunked(writer, body)  # type: ignore[arg-type]
            while not message.complete:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionError("the Runtime API closed the connection")
                parser.feed_data(data)
        except BaseException:  # cancelled mid-response too: the connection is out of step
            self.close()
            raise
        if not parser.should_keep_alive():
            self.close()
        return parser.get_status_code(), message.headers, b"".join(message.body)

    async def post(self, path: str, payload: Union[dict[str, Any], bytes], error_type: Optional[str] = None) -> None:
        """`payload`: JSON, or JSON already encoded (a response whose size was checked)."""
        headers = {"content-type": "application/json"}
        if error_type:
            headers["lambda-runtime-function-error-type"] = error_type
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        status, _, body = await self.request("POST", path, data, headers)
        if status >= 300:  # e.g. 413 for a response over Lambda's 6 MB: nothing to retry
            _log(logging.ERROR, "lambda_post_rejected", path=path, status=status,
                 body=body[:500].decode("utf-8", "replace"))

    async def post_stream(self, path: str, response: Response) -> None:
        """The response in Lambda's streaming response mode: a JSON prelude (status, headers),
        eight NUL bytes, then the body as it comes."""
        prelude = json.dumps({"statusCode": response.status,
                              "headers": {"content-type": response.content_type, **(response.headers or {})}})

        async def body() -> AsyncIterator[bytes]:
            yield prelude.encode() + _PRELUDE_END
            if response.stream is None:
                yield response.body
            else:
                async for part in response.stream:
                    yield part

        status, _, answer = await self.request("POST", path, body(), {
            "lambda-runtime-function-response-mode": "streaming",
            "content-type": _STREAMED_RESPONSE_TYPE,
            "trailer": f"{_ERROR_TYPE_TRAILER}, {_ERROR_BODY_TRAILER}"})
        if status >= 300:
            _log(logging.ERROR, "lambda_post_rejected", path=path, status=status,
                 body=answer[:500].decode("utf-8", "replace"))

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


async def _send_chunked(writer: asyncio.StreamWriter, parts: AsyncIterator[bytes]) -> None:
    trailers = b""
    try:
        async for part in parts:
            if part:
                writer.write(b"%x\r\n%b\r\n" % (len(part), part))
                await writer.drain()
    except Exception as e:  # noqa: BLE001 - the response is under way: Lambda's trailers say it failed
        error = json.dumps(_error(type(e).__name__, str(e))).encode()
        trailers = (f"{_ERROR_TYPE_TRAILER}: {type(e).__name__}\r\n"
                    f"{_ERROR_BODY_TRAILER}: {base64.b64encode(error).decode()}\r\n").encode()
        _log(logging.ERROR, "lambda_stream_failed", error=f"{type(e).__name__}: {e}")
    writer.write(b"0\r\n" + trailers + b"\r\n")


class _Message:
    """httptools callbacks collecting one response."""

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True
