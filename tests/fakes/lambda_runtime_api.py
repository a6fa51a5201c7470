"""A local AWS Lambda Runtime API on 127.0.0.1, for tests (standard library only).

What Lambda offers a custom runtime: GET /invocation/next long-polls for the next event, and the
runtime posts its result to /invocation/<id>/response or /invocation/<id>/error, or a failed
start to /init/error. Point a process or a container at it with
AWS_LAMBDA_RUNTIME_API=<address>. The real runtime interface emulator is a GitHub binary that
cannot be had here; the protocol is small and documented:
https://docs.aws.amazon.com/lambda/latest/dg/runtimes-api.html

    with LambdaRuntimeApi() as api:
        ...  # start the runtime with AWS_LAMBDA_RUNTIME_API=api.address
        api.wait_for_poll(120)                     # it polls /next: it is ready
        kind, payload, headers, request_id = api.invoke(function_url_event("GET", "/v2/health/live"))

Lower level: `put(event)` queues an event, `next_post()` returns every post in arrival order,
`drop_next` answers /next polls by closing the connection, `chunked=True` sends events with
Transfer-Encoding: chunked instead of Content-Length.
"""

from __future__ import annotations

import collections
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from ml_contract.model_settings import LAMBDA_MAX_PAYLOAD_BYTES

PREFIX = "/2018-06-01/runtime"
DEFAULT_FUNCTION_ARN = "arn:aws:lambda:us-east-1:123456789012:function:test"


@dataclass(frozen=True)
class Post:
    """One result the runtime posted: to /invocation/<key>/<kind>, or /init/error (key "init")."""

    path: str
    key: str  # the request id, or "init"
    kind: str  # "response" or "error"
    body: bytes
    headers: Dict[str, str] = field(repr=False)  # names lower-cased
    # A chunked post: when each chunk arrived (seconds after its head), and its trailers.
    chunk_times: Tuple[float, ...] = ()
    trailers: Dict[str, str] = field(default_factory=dict)

    @property
    def payload(self) -> Any:
        """The body as JSON (None if empty)."""
        return json.loads(self.body) if self.body else None

    @property
    def error_type(self) -> Optional[str]:
        return self.headers.get("lambda-runtime-function-error-type")


@dataclass(frozen=True)
class _Event:
    request_id: str
    event: Any  # JSON-serialisable, or bytes sent as they are
    deadline_in: float


class LambdaRuntimeApi:
    def __init__(self, function_arn: str = DEFAULT_FUNCTION_ARN, deadline_seconds: float = 60,
                 chunked: bool = False) -> None:
        self.function_arn = function_arn
        self.deadline_seconds = deadline_seconds  # each invocation's deadline, from when /next hands it out
        self.chunked = chunked
        self.polls = 0  # GET /invocation/next requests received
        self.rejected: List[str] = []  # request ids whose response was refused as too large
        self.drop_next = 0  # how many of the next /next polls to answer by closing the connection
        self.changed = threading.Condition()
        self.results: Dict[str, Post] = {}  # the latest post for each request id (or "init")
        self._events: Deque[_Event] = collections.deque()
        self._posts: List[Post] = []
        self._read = 0  # posts returned by next_post so far
        self._closed = False
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                if self.path != f"{PREFIX}/invocation/next":
                    return self._reply(404)
                item = api._next_event()
                if item is None:  # dropped on purpose, or closing: end the (long) poll
                    self.close_connection = True
                    return
                body = item.event if isinstance(item.event, bytes) else json.dumps(item.event).encode()
                self.send_response(200)
                self.send_header("Lambda-Runtime-Aws-Request-Id", item.request_id)
                self.send_header("Lambda-Runtime-Deadline-Ms", str(int((time.time() + item.deadline_in) * 1000)))
                self.send_header("Lambda-Runtime-Invoked-Function-Arn", api.function_arn)
                self.send_header("Content-Type", "application/json")
                if api.chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for chunk in (body[:10], body[10:]):
                        if chunk:
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.write(b"0\r\n\r\n")
                else:
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

            def do_POST(self) -> None:
                body, chunk_times, trailers = self._read_body()
                parts = self.path[len(PREFIX):].strip("/").split("/") if self.path.startswith(PREFIX) else []
                if len(parts) == 3 and parts[0] == "invocation" and parts[2] in ("response", "error"):
                    key, kind = parts[1], parts[2]
                elif parts == ["init", "error"]:
                    key, kind = "init", "error"
                else:
                    return self._reply(404)
                if kind == "response" and len(body) > LAMBDA_MAX_PAYLOAD_BYTES and not trailers and not chunk_times:
                    # As Lambda: a buffered response over the limit is refused (the client gets a 502).
                    api.rejected.append(key)
                    return self._reply(413)
                api._record(Post(self.path, key, kind, body, {k.lower(): v for k, v in self.headers.items()},
                                 chunk_times, trailers))
                self._reply(202)

            def _read_body(self) -> Tuple[bytes, Tuple[float, ...], Dict[str, str]]:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    started = time.monotonic()
                    chunks, times, trailers = [], [], {}
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if not size:
                            while (line := self.rfile.readline()) not in (b"\r\n", b"\n", b""):
                                name, _, value = line.decode("latin-1").partition(":")
                                trailers[name.strip().lower()] = value.strip()
                            return b"".join(chunks), tuple(times), trailers
                        chunks.append(self.rfile.read(size))
                        times.append(time.monotonic() - started)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length", "0"))), (), {}

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

    def __enter__(self) -> "LambdaRuntimeApi":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving; long polls still open end with a closed connection."""
        with self.changed:
            self._closed = True
            self.changed.notify_all()
        self.server.shutdown()
        self.server.server_close()

    # Feeding events

    def put(self, event: Any, request_id: Optional[str] = None, deadline_in: Optional[float] = None) -> str:
        """Queue `event` for /invocation/next, to expire `deadline_in` seconds (default
        `deadline_seconds`) after it is handed out; returns its request id (a new uuid unless given)."""
        request_id = request_id or str(uuid.uuid4())
        with self.changed:
            self._events.append(_Event(request_id, event, self.deadline_seconds if deadline_in is None else deadline_in))
            self.changed.notify_all()
        return request_id

    def invoke(self, event: Any, timeout: float = 60, alive: Callable[[], bool] = lambda: True,
               logs: Callable[[], str] = lambda: "") -> Tuple[str, Any, Dict[str, str], str]:
        """Queue one event; what the runtime posted back: (kind, payload, headers, request id),
        kind "response" or "error"."""
        request_id = self.put(event)
        post = self.wait_for_result(request_id, timeout, alive, logs)
        return post.kind, post.payload, post.headers, request_id

    # Watching the runtime

    def wait_for_poll(self, timeout: float, alive: Callable[[], bool] = lambda: True,
                      logs: Callable[[], str] = lambda: "") -> None:
        """Until the runtime polls /next (it has started); `alive()` False or the timeout fails."""
        self._wait(lambda: self.polls > 0, timeout, alive, logs,
                   "polling for events", f"the runtime did not poll /invocation/next within {timeout} s")

    def wait_for_result(self, request_id: str, timeout: float = 60, alive: Callable[[], bool] = lambda: True,
                        logs: Callable[[], str] = lambda: "") -> Post:
        """What the runtime posted for `request_id` (taken out of `results`); an init error fails."""
        def answered() -> bool:
            if "init" in self.results:
                raise AssertionError(f"the runtime reported an init error: {self.results['init'].payload}\n{logs()}")
            return request_id in self.results

        self._wait(answered, timeout, alive, logs, f"answering {request_id}",
                   f"no answer to {request_id} within {timeout} s")
        with self.changed:
            return self.results.pop(request_id)

    def next_post(self, timeout: float = 10) -> Post:
        """The next post (any path) in the order they arrived, each once."""
        self._wait(lambda: self._read < len(self._posts), timeout, lambda: True, lambda: "",
                   "posting", f"nothing posted within {timeout} s")
        with self.changed:
            self._read += 1
            return self._posts[self._read - 1]

    @property
    def init_error(self) -> Optional[Post]:
        with self.changed:
            return self.results.get("init")

    # The server's side

    def _next_event(self) -> Optional[_Event]:
        with self.changed:
            self.polls += 1
            self.changed.notify_all()
            if self.drop_next:
                self.drop_next -= 1
                return None
            while not self._events and not self._closed:
                self.changed.wait()
            return None if self._closed else self._events.popleft()

    def _record(self, post: Post) -> None:
        with self.changed:
            self._posts.append(post)
            self.results[post.key] = post
            self.changed.notify_all()

    def _wait(self, done: Callable[[], bool], timeout: float, alive: Callable[[], bool],
              logs: Callable[[], str], doing: str, late: str) -> None:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not done():
                if not alive():
                    raise AssertionError(f"the runtime exited before {doing}:\n{logs()}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"{late}:\n{logs()}")
                self.changed.wait(min(0.5, max(0.01, deadline - time.monotonic())))


def function_url_event(method: str, path: str, body: str = "", headers: Optional[Dict[str, str]] = None,
                       base64_body: bool = False, query: str = "", region: str = "us-east-1") -> Dict[str, Any]:
    """A Function URL invocation (HTTP API payload 2.0), as Lambda hands it to the runtime."""
    return {
        "version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": query,
        "headers": {"host": f"example.lambda-url.{region}.on.aws", **(headers or {})},
        "requestContext": {"http": {"method": method, "path": path, "protocol": "HTTP/1.1",
                                    "sourceIp": "127.0.0.1"}, "stage": "$default", "requestId": "test"},
        "body": body, "isBase64Encoded": base64_body,
    }

