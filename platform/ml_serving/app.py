"""Routes a request to the model's workers: validation, errors, metrics and the access log."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import pkgutil
import sys
import time
from typing import Any, AsyncIterator, Callable, Optional, Union

from ml_http.messages import request_id as usable_request_id
from ml_http.server import Request, Response
from ml_runtime import wire
from ml_runtime.errors import MALFORMED_JSON
from ml_serving import generation, oip, openai_api
from ml_serving.metrics import Metrics
from ml_serving.openapi import (
    BINARY_CONTENT_TYPES,
    BINARY_RESPONSE_TYPE,
    DOCS_PATH,
    build_openapi,
    compile_schema,
    schema_error,
)
from ml_serving import streams
from ml_serving.workers import QueueFull, Stream, WorkerLost, WorkerPool, WorkerResponse, WorkerTimeout

logger = logging.getLogger("ml_serving.app")

JSON_TYPES = ("application/json", "")


@functools.lru_cache(maxsize=None)
def docs_page() -> bytes:
    """The model's page for people: it builds its forms from /openapi.json in the browser."""
    page = pkgutil.get_data("ml_serving", "docs.html")
    assert page is not None
    return page


class ModelApp:
    def __init__(self, manifest: dict[str, Any], pool: WorkerPool, metrics: Metrics,
                 access_log: Callable[[str], Any] = sys.stdout.write) -> None:
        self.name = manifest["name"]
        self.version = int(manifest["version"])
        self.manifest = manifest
        self.pool = pool
        self.metrics = metrics
        self.access_log = access_log
        self.accepting = True
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.validators: dict[str, Callable[[Any], Any]] = {}
        self.predict_inputs: dict[str, oip.PredictInput] = {}
        self.generates = False  # whether the model generates text: the OpenAI routes are served
        self._publish(build_openapi(manifest, None))
        metrics.gauges["ml_queue_depth"] = lambda: self.pool.queue.qsize()
        metrics.gauges["ml_workers_ready"] = lambda: self.pool.ready_workers

    def describe(self, description: dict[str, Any]) -> None:
        """Install the endpoints and schemas a worker reported after loading the model."""
        self.endpoints = description["endpoints"]
        definitions = description["definitions"]
        for name, endpoint in self.endpoints.items():
            self.validators[name] = compile_schema(endpoint["request"], definitions)
        self.predict_inputs = oip.predict_inputs(description)
        self.generates = generation.supported(description)
        document = build_openapi(self.manifest, description)
        if self.generates:
            openai_api.describe(document, self.version, self.name)
        self._publish(document)

    def swap(self, pool: WorkerPool) -> None:
        """Serve new requests from `pool`, whose workers have loaded the model (live reload);
        requests already given to the old pool finish there."""
        assert pool.description is not None
        self.pool = pool
        self.describe(pool.description)

    def _publish(self, document: dict[str, Any]) -> None:
        # The document is the route table: the server answers exactly what it lists.
        self.openapi = json.dumps(document).encode()
        self.methods = {path: tuple(m.upper() for m in item) for path, item in document["paths"].items()}
        self._endpoint_paths = {f"/v{self.version}/{name}": name for name in self.endpoints}

    @property
    def ready(self) -> bool:
        return self.accepting and self.pool.ready

    async def handle(self, request: Request, timeout: Optional[float] = None) -> Response:
        """Answer one request; `timeout` (seconds) shortens the model's own, e.g. to fit a
        Lambda invocation's deadline."""
        started = time.perf_counter()
        request_id = usable_request_id(request.headers.get("x-request-id", ""))
        self.metrics.in_flight += 1
        route = "other"
        try:
            route, response = await self._route(request, request_id, timeout)
        except Exception:
            logger.exception("request %s failed inside the server", request_id)
            response = Response.json(500, {"error": "internal server error", "request_id": request_id})
        finally:
            self.metrics.in_flight -= 1
        response.headers = {**(response.headers or {}), "x-request-id": request_id}
        elapsed = time.perf_counter() - started
        self.metrics.observe(route, request.method, response.status, elapsed)
        self.access_log(json.dumps({
            "ts": round(time.time(), 3), "request_id": request_id, "method": request.method,
            "path": request.path, "status": response.status, "ms": round(elapsed * 1000, 3),
            "bytes_in": len(request.body), "bytes_out": len(response.body),
        }, separators=(",", ":")) + "\n")
        return response

    async def _route(self, request: Request, request_id: str, timeout: Optional[float]) -> tuple[str, Response]:
        path = request.path.rstrip("/") or "/"
        methods = self.methods.get(path)
        if methods is None:
            return "other", self._not_found(request)
        if request.method not in methods:
            allowed = ", ".join(methods)
            return path, Response.json(405, {"error": f"{request.method} is not allowed on {path}; use {allowed}",
                                             "request_id": request_id}, headers={"allow": allowed})
        endpoint = self._endpoint_paths.get(path)
        if endpoint is not None:  # first: a model at version 2 has its own routes under /v2/
            return path, await self._call(endpoint, request, request_id, timeout)
        if path == "/metrics":
            return path, Response(200, self.metrics.render(), content_type="text/plain; version=0.0.4")
        if path == "/openapi.json":
            return path, Response(200, self.openapi)
        if path == DOCS_PATH:
            return path, Response(200, docs_page(), content_type="text/html; charset=utf-8")
        if self.generates and path.startswith(openai_api.prefix(self.version) + "/"):
            return await openai_api.route(self, request, path, request_id, timeout)
        return await oip.route(self, request, path, request_id, timeout)

    def _not_found(self, request: Request) -> Response:
        return Response.json(404, {"error": f"no route for {request.method} {request.path}",
                                   "routes": [f"{m} {p}" for p, ms in self.methods.items() for m in ms]})

    async def _call(self, endpoint: str, request: Request, request_id: str, timeout: Optional[float]) -> Response:
        binary_parameter = self.endpoints[endpoint]["binary_parameter"]
        if binary_parameter and request_content_type(request) in BINARY_CONTENT_TYPES:
            return await self._run(endpoint, request, request.body, request_id, binary_parameter, timeout)
        payload = self.read_json(request, request_id, " or ".join(BINARY_CONTENT_TYPES) if binary_parameter else None)
        if isinstance(payload, Response):
            return payload
        error = self.validate(endpoint, payload)
        if error is not None:
            return Response.json(422, {**error, "request_id": request_id})
        return await self._run(endpoint, request, request.body or b"{}", request_id, None, timeout)

    async def _run(self, endpoint: str, request: Request, body: bytes, request_id: str,
                   binary_parameter: Optional[str], timeout: Optional[float]) -> Response:
        if self.endpoints[endpoint].get("streaming"):
            return await self.invoke_stream(endpoint, body, request_id, streams.negotiate(request.headers.get("accept", "")),
                                            binary_parameter, timeout)
        return await self.invoke(endpoint, body, request_id, binary_parameter, timeout)

    def read_json(self, request: Request, request_id: str, also_accepted: Optional[str] = None) -> Any:
        """The request's JSON body (an empty body is `{}`), or the 415 / 400 response to send."""
        content_type = request_content_type(request)
        if content_type not in JSON_TYPES:
            accepted = "application/json" + (f" or {also_accepted}" if also_accepted else "")
            return Response.json(415, {"error": f"unsupported content type {content_type!r}; send {accepted}",
                                       "request_id": request_id})
        try:
            return wire.loads(request.body) if request.body else {}
        except wire.MalformedJSON as e:
            return Response.json(400, {"error": MALFORMED_JSON, "detail": str(e), "request_id": request_id})

    def validate(self, endpoint: str, payload: Any) -> Optional[dict[str, Any]]:
        """The 422 body for a payload the endpoint's request schema rejects, else None."""
        return schema_error(self.validators[endpoint], payload)

    async def invoke(self, endpoint: str, body: bytes, request_id: str,
                     binary_parameter: Optional[str] = None, timeout: Optional[float] = None) -> Response:
        """Run the endpoint in a worker; `timeout` (seconds) shortens the model's own."""
        if not self.accepting:
            return Response.json(503, {"error": "server is shutting down", "request_id": request_id})
        try:
            result = await self.pool.submit(endpoint, body, request_id, binary_parameter,
                                            timeout=timeout)
        except (QueueFull, WorkerTimeout, WorkerLost) as e:
            return self.pool_error(e, request_id)
        return self.answer(endpoint, result, request_id)

    async def invoke_stream(self, endpoint: str, body: bytes, request_id: str, events: str,
                            binary_parameter: Optional[str] = None, timeout: Optional[float] = None) -> Response:
        """Run a streaming endpoint in a worker: each item is sent as it is made, as `events`
        (ml_serving.streams). An error before the first item is an ordinary error response;
        after it, the stream's last event."""
        opened = await self.open_stream(endpoint, body, request_id, binary_parameter, timeout)
        if isinstance(opened, Response):
            return opened
        stream, first = opened
        return Response(200, content_type=streams.CONTENT_TYPES[events],
                        stream=self._stream(stream, first, events, request_id))

    async def open_stream(self, endpoint: str, body: bytes, request_id: str, binary_parameter: Optional[str] = None,
                          timeout: Optional[float] = None) -> Union[Response, tuple[Stream, Union[bytes, WorkerResponse]]]:
        """Queue a request to a streaming endpoint and wait for its first event: the stream and
        that event (an item, or the final 200 of an empty stream), or the error response when it
        failed before any item."""
        if not self.accepting:
            return Response.json(503, {"error": "server is shutting down", "request_id": request_id})
        try:
            stream = self.pool.submit_stream(endpoint, body, request_id, binary_parameter, timeout=timeout)
            first = await stream.next()
        except (QueueFull, WorkerTimeout, WorkerLost) as e:
            return self.pool_error(e, request_id)
        except asyncio.CancelledError:
            stream.cancel()
            raise
        if isinstance(first, WorkerResponse) and first.status != 200:
            return self.answer(endpoint, first, request_id)
        return stream, first

    async def _stream(self, stream: Stream, first: Union[bytes, WorkerResponse], events: str,
                      request_id: str) -> AsyncIterator[bytes]:
        event = first
        try:
            while isinstance(event, bytes):
                yield streams.item(events, event)
                event = await stream.next()
            if event.status != 200:
                yield streams.error(events, self.answer("", event, request_id))
        except (WorkerTimeout, WorkerLost) as e:
            yield streams.error(events, self.pool_error(e, request_id))
        except BaseException:  # the client went away (cancelled), or the server is stopping
            stream.cancel()
            raise

    @staticmethod
    def pool_error(error: Exception, request_id: str) -> Response:
        """The response for a request the pool could not get answered."""
        if isinstance(error, QueueFull):
            return Response.json(503, {"error": "server is at capacity; retry later", "request_id": request_id},
                                 headers={"retry-after": "1"})
        if isinstance(error, WorkerTimeout):
            return Response.json(504, {"error": f"the model did not answer within {error.seconds:g} s",
                                       "request_id": request_id})
        return Response.json(503, {"error": "the model worker died while handling this request; it is being restarted",
                                   "request_id": request_id}, headers={"retry-after": "1"})

    def answer(self, endpoint: str, result: WorkerResponse, request_id: str) -> Response:
        """The response for a worker's answer."""
        if result.status == 500 and not result.body:
            return Response.json(500, {"error": "the model raised an exception; see the server log",
                                       "request_id": request_id})
        if result.status != 200:
            return Response(result.status, _with_request_id(result.body, request_id))
        if endpoint and self.endpoints[endpoint]["binary_response"]:
            return Response(200, result.body, content_type=BINARY_RESPONSE_TYPE)
        return Response(200, result.body)


def request_content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _with_request_id(body: bytes, request_id: str) -> bytes:
    try:
        payload = json.loads(body)
    except ValueError:
        return body
    return json.dumps({**payload, "request_id": request_id}).encode()
