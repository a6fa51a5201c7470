"""The local gateway: one port for every model deployed on this machine, routed by host name.

    PEX_MODULE=ml_serving.gateway server.pex --routes <state dir>/routes.json --port 8480

`http://<model>.ml.<domain>:<port>/...` reaches a backend of <model> (a model server started by
`ml_deploy.local`), by path:

- `/v<N>/...` and Open Inference Protocol `/v2/models/<m>/versions/<N>/...`: version N;
- anything else (`/v2/health/*`, `/v2/models/<m>`, `/openapi.json`, `/metrics`): the highest
  live version.

An unknown host or version answers a JSON 404 listing what is routed. `GET /-/routes` (any host)
shows the route table with its generation number and the requests in flight per backend: the
deploy tool reads it to know when a new table is live and when an old backend has nothing left
in flight.

The route table is a JSON file written by the deploy tool (atomically, by rename):

    {"generation": 7, "domain": "localhost",
     "models": {"iris": {"1": {"backend": "127.0.0.1:41234", "digest": "sha256:..."}}}}

It is re-read on SIGHUP and whenever the file changes; a table that fails to load leaves the
previous one in place (and its error in `/-/routes`). Bodies are streamed both ways
(Content-Length or chunked), backend connections are kept alive and reused. A request is retried
on the (possibly new) route only when its backend gave no byte of a response: it could not be
reached, it closed a kept-alive connection before answering, or it was replaced and refused the
request because it is shutting down. The request body is kept for that, up to REPLAY_LIMIT bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import os
import re
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any, AsyncIterator, Deque, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import httptools

from ml_serving.http import write_ready_file

logger = logging.getLogger("ml_serving.gateway")

READ_SIZE = 256 * 1024
REPLAY_LIMIT = 1024 * 1024  # request bytes kept so that a request can be sent again
DISCARD_LIMIT = 1024 * 1024  # body bytes read and dropped to keep a connection after a local answer
ATTEMPTS = 4
RETRY_DELAYS = (0.0, 0.05, 0.25)  # before the 2nd, 3rd and 4th attempt
CONNECT_TIMEOUT = 5.0
MAX_IDLE_PER_BACKEND = 64
ROUTES_POLL_SECONDS = 1.0
ADMIN_PREFIX = "/-/"

# Headers about one connection (RFC 9110 7.6.1), never forwarded; `expect` too: the gateway
# answers 100-continue itself.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer",
                        "transfer-encoding", "upgrade", "expect"})
# Set by the gateway from what it saw, not trusted from clients.
FORWARDED = frozenset({"x-forwarded-host", "x-forwarded-proto"})
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_REASONS = {s.value: s.phrase for s in HTTPStatus}


# ----------------------------------------------------------------------------------------------
# Routing


@dataclass(frozen=True)
class Backend:
    address: str  # host:port
    digest: str = ""


@dataclass(frozen=True)
class Route:
    model: str  # the host label: <model>.ml.<domain>
    version: int
    backend: Backend


@dataclass(frozen=True)
class NotRouted:
    reason: str


_OIP_VERSION = re.compile(r"^/v2/models/[^/]+/versions/(\d+)(?:/|$)")
_PATH_VERSION = re.compile(r"^/v(\d+)(?:/|$)")


def requested_version(path: str) -> Optional[int]:
    """The model version a path names, or None for "the highest live one". OIP paths start with
    /v2 whatever the model's version, so they are recognised before /v<N>/."""
    match = _OIP_VERSION.match(path)
    if match:
        return int(match.group(1))
    if path == "/v2" or path.startswith(("/v2/health/", "/v2/models/")) or path == "/v2/models":
        return None
    match = _PATH_VERSION.match(path)
    return int(match.group(1)) if match else None


def hostname(host_header: str) -> str:
    """`Iris.ML.localhost.:8480` -> `iris.ml.localhost`."""
    host = host_header.strip().lower()
    if host.startswith("["):  # an IPv6 literal is never a model's name
        return host
    return host.partition(":")[0].rstrip(".")


@dataclass(frozen=True)
class RouteTable:
    generation: int = 0
    domain: str = "localhost"
    models: Mapping[str, Mapping[int, Backend]] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any) -> "RouteTable":
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object with generation, domain and models")
        generation = data.get("generation", 0)
        if not isinstance(generation, int) or isinstance(generation, bool):
            raise ValueError(f"generation must be a whole number, not {generation!r}")
        domain = str(data.get("domain") or "localhost").lower().strip(".")
        models: Dict[str, Dict[int, Backend]] = {}
        for model, versions in (data.get("models") or {}).items():
            if not isinstance(versions, dict):
                raise ValueError(f"models.{model} must map versions to backends")
            routes: Dict[int, Backend] = {}
            for version, entry in versions.items():
                where = f"models.{model}.{version}"
                if not str(version).isdigit() or not isinstance(entry, dict):
                    raise ValueError(f"{where}: expected a version number mapped to {{\"backend\": \"host:port\"}}")
                address = str(entry.get("backend", ""))
                host, _, port = address.rpartition(":")
                if not host or not port.isdigit():
                    raise ValueError(f"{where}.backend: expected host:port, got {address!r}")
                routes[int(version)] = Backend(address, str(entry.get("digest") or ""))
            if routes:
                models[str(model).lower()] = routes
        return cls(generation, domain, models)

    def to_json(self) -> Dict[str, Any]:
        return {
            "generation": self.generation,
            "domain": self.domain,
            "models": {m: {str(v): {"backend": b.address, "digest": b.digest} for v, b in sorted(vs.items())}
                       for m, vs in sorted(self.models.items())},
        }

    @property
    def suffix(self) -> str:
        return f".ml.{self.domain}"

    def resolve(self, host_header: str, path: str) -> Union[Route, NotRouted]:
        host = hostname(host_header)
        model = host[: -len(self.suffix)] if host.endswith(self.suffix) else ""
        if not model or "." in model:
            return NotRouted(f"host {host_header!r} names no model: use <model>{self.suffix}")
        versions = self.models.get(model)
        if not versions:
            return NotRouted(f"no model {model!r} is deployed behind this gateway")
        version = requested_version(path)
        if version is None:
            version = max(versions)
        backend = versions.get(version)
        if backend is None:
            live = ", ".join(f"v{v}" for v in sorted(versions))
            return NotRouted(f"{model} has no version {version} deployed (live: {live})")
        return Route(model, version, backend)

    def urls(self, port: int) -> List[str]:
        return [f"http://{m}{self.suffix}:{port}/v{v}/" for m in sorted(self.models) for v in sorted(self.models[m])]

    def serves(self, address: str) -> bool:
        return any(b.address == address for vs in self.models.values() for b in vs.values())

    def addresses(self) -> set:
        return {b.address for vs in self.models.values() for b in vs.values()}


def load_routes(path: Path) -> RouteTable:
    """The table in `path`; an absent file is an empty table (nothing deployed yet)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return RouteTable()
    try:
        return RouteTable.from_json(json.loads(text))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


# ----------------------------------------------------------------------------------------------
# HTTP/1.1 messages as a stream of events, pulled one at a time


END = object()  # the message is complete
EOF = object()  # the connection was closed


@dataclass
class Head:
    """A request's or a response's start line and headers (names lower-cased, in order)."""

    headers: List[Tuple[str, str]]
    keep_alive: bool
    http11: bool
    method: str = ""  # requests
    target: str = ""
    status: int = 0  # responses
    reason: str = ""

    def get(self, name: str, default: str = "") -> str:
        for key, value in self.headers:
            if key == name:
                return value
        return default

    @property
    def chunked(self) -> bool:
        return "chunked" in self.get("transfer-encoding").lower()

    @property
    def length(self) -> Optional[int]:
        value = self.get("content-length")
        return int(value) if value.strip().isdigit() else None

    def connection_tokens(self) -> set:
        return {t.strip().lower() for t in self.get("connection").split(",") if t.strip()}


class _Events:
    """httptools' callbacks turned into a queue of events (Head, body bytes, END), so that one
    coroutine per connection pulls a message at a time and TCP gives the backpressure."""

    def __init__(self, response: bool) -> None:
        self.parser = httptools.HttpResponseParser(self) if response else httptools.HttpRequestParser(self)
        self.response = response
        self.queue: Deque[Any] = collections.deque()
        self._url = b""
        self._reason = b""
        self._headers: List[Tuple[str, str]] = []

    def feed(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self._url, self._reason, self._headers = b"", b"", []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        parser = self.parser
        head = Head(self._headers, parser.should_keep_alive(), parser.get_http_version() == "1.1")
        if self.response:
            head.status, head.reason = parser.get_status_code(), self._reason.decode("latin-1")
        else:
            head.method, head.target = parser.get_method().decode("latin-1"), self._url.decode("latin-1")
        self.queue.append(head)

    def on_body(self, body: bytes) -> None:
        self.queue.append(bytes(body))

    def on_message_complete(self) -> None:
        self.queue.append(END)


class Connection:
    """One HTTP/1.1 connection, a client's or a backend's."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, response: bool) -> None:
        self.reader, self.writer = reader, writer
        self.events = _Events(response)

    async def next(self) -> Any:
        """The next event: a Head, a chunk of body bytes, END, or EOF."""
        queue = self.events.queue
        while not queue:
            data = await self.reader.read(READ_SIZE)
            if not data:
                return EOF
            self.events.feed(data)
        return queue.popleft()

    @property
    def reusable(self) -> bool:
        return not (self.events.queue or self.writer.is_closing() or self.reader.at_eof()
                    or self.reader.exception() is not None)

    def close(self) -> None:
        self.writer.close()


def _frame(chunk: bytes, chunked: bool) -> bytes:
    return b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk


class ClientGone(Exception):
    pass


class RequestBody:
    """The client's request body, read as it is forwarded; the first REPLAY_LIMIT bytes are kept
    so that the request can be sent again to another backend."""

    def __init__(self, client: Connection, head: Head) -> None:
        self.client = client
        self.chunked = head.chunked
        self.kept: List[bytes] = []
        self.kept_size = 0
        self.complete = False  # the whole body was read from the client
        self.replayable = True

    async def chunks(self) -> AsyncIterator[bytes]:
        for chunk in self.kept:
            yield chunk
        while not self.complete:
            try:
                event = await self.client.next()
            except (ConnectionError, httptools.HttpParserError) as e:
                raise ClientGone(str(e)) from None
            if event is END:
                self.complete = True
                return
            if event is EOF or not isinstance(event, bytes):
                raise ClientGone("the client closed the connection in the middle of its request")
            if self.replayable:
                self.kept_size += len(event)
                if self.kept_size > REPLAY_LIMIT:
                    self.replayable = False
                    self.kept.clear()
                else:
                    self.kept.append(event)
            yield event

    async def discard(self) -> bool:
        """Read and drop what is left; False if it was too large to keep the connection for."""
        size = 0
        async for chunk in self.chunks():
            size += len(chunk)
            if size > DISCARD_LIMIT:
                return False
        return True


# ----------------------------------------------------------------------------------------------
# Backend connections


class Pool:
    """Kept-alive connections to backends, per address."""

    def __init__(self) -> None:
        self.idle: Dict[str, List[Connection]] = {}

    async def acquire(self, address: str) -> Tuple[Connection, bool]:
        """A connection to `address` and whether it was reused (a reused one may turn out to have
        been closed by the backend)."""
        idle = self.idle.get(address)
        while idle:
            connection = idle.pop()
            if connection.reusable:
                return connection, True
            connection.close()
        host, _, port = address.rpartition(":")
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port), limit=READ_SIZE),
                                                CONNECT_TIMEOUT)
        return Connection(reader, writer, response=True), False

    def release(self, address: str, connection: Connection) -> None:
        idle = self.idle.setdefault(address, [])
        if connection.reusable and len(idle) < MAX_IDLE_PER_BACKEND:
            idle.append(connection)
        else:
            connection.close()

    def keep_only(self, addresses: set) -> None:
        """Close idle connections to backends that are no longer routed."""
        for address in [a for a in self.idle if a not in addresses]:
            for connection in self.idle.pop(address):
                connection.close()

    def close(self) -> None:
        self.keep_only(set())


# ----------------------------------------------------------------------------------------------
# The gateway


def _request_head(head: Head, route_host: str, client_ip: str, request_id: str, chunked: bool) -> bytes:
    dropped = HOP_BY_HOP | FORWARDED | head.connection_tokens()
    lines = [f"{head.method} {head.target} HTTP/1.1"]
    forwarded_for = ""
    for name, value in head.headers:
        if name in dropped:
            continue
        if name == "x-forwarded-for":
            forwarded_for = f"{forwarded_for}, {value}" if forwarded_for else value
            continue
        if name == "x-request-id":
            continue
        lines.append(f"{name}: {value}")
    if chunked:
        lines.append("transfer-encoding: chunked")
    lines.append(f"x-forwarded-for: {forwarded_for + ', ' if forwarded_for else ''}{client_ip}")
    lines.append(f"x-forwarded-host: {route_host}")
    lines.append("x-forwarded-proto: http")
    lines.append(f"x-request-id: {request_id}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _response_head(head: Head, digest: str, keep_alive: bool, chunked: bool) -> bytes:
    dropped = HOP_BY_HOP | head.connection_tokens()
    lines = [f"HTTP/1.1 {head.status} {head.reason or _REASONS.get(head.status, '')}"]
    lines.extend(f"{name}: {value}" for name, value in head.headers if name not in dropped)
    if chunked:
        lines.append("transfer-encoding: chunked")
    if digest:
        lines.append(f"x-ml-digest: {digest}")
    if not keep_alive:
        lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _json_response(status: int, payload: Any, keep_alive: bool, extra: Sequence[str] = ()) -> bytes:
    body = json.dumps(payload, indent=1).encode() + b"\n"
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, '')}", "content-type: application/json",
             f"content-length: {len(body)}", *extra]
    if not keep_alive:
        lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _log(event: str, **fields: Any) -> None:
    logger.info(json.dumps({"event": event, **fields}, default=str))


class Gateway:
    def __init__(self, routes_path: Path, *, read_timeout: float = 600.0) -> None:
        self.routes_path = routes_path
        self.read_timeout = read_timeout
        self.table = RouteTable()
        self.reload_error: Optional[str] = None
        self.pool = Pool()
        self.in_flight: collections.Counter = collections.Counter()  # backend address -> requests
        self.busy = 0  # exchanges in progress, for a graceful stop
        self.requests = 0
        self.retries = 0
        self.port = 0
        self.started = time.time()
        self._routes_stat: Optional[Tuple[int, int, int]] = None
        self._clients: set = set()
        self._server: Optional[asyncio.AbstractServer] = None

    # -- route table

    def _stat(self) -> Optional[Tuple[int, int, int]]:
        try:
            st = self.routes_path.stat()
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def reload(self) -> bool:
        """Load the route table file; on error keep serving the current table."""
        self._routes_stat = self._stat()
        try:
            table = load_routes(self.routes_path)
        except (OSError, ValueError) as e:
            self.reload_error = str(e)
            logger.error(json.dumps({"event": "reload_failed", "error": str(e),
                                     "serving_generation": self.table.generation}))
            return False
        # One assignment: every request sees either the old table or the new one.
        self.table, self.reload_error = table, None
        self.pool.keep_only(table.addresses())
        _log("routes", generation=table.generation, urls=table.urls(self.port) if self.port else None)
        return True

    async def watch_routes(self, interval: float = ROUTES_POLL_SECONDS) -> None:
        """Reload when the file changes, for writers that cannot signal this process."""
        while True:
            await asyncio.sleep(interval)
            if self._stat() != self._routes_stat:
                self.reload()

    # -- serving

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._client, host, port, limit=READ_SIZE,
                                                  reuse_address=True, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self, grace: float) -> None:
        """Stop accepting, let exchanges in progress finish (up to `grace` seconds), close."""
        if self._server is not None:
            self._server.close()
        deadline = time.monotonic() + grace
        while self.busy and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for writer in list(self._clients):
            writer.close()
        self.pool.close()

    def admin(self, path: str) -> Tuple[int, Any]:
        if path == "/-/health":
            return 200, {"ok": True}
        if path == "/-/routes":
            return 200, {
                **self.table.to_json(),
                "urls": self.table.urls(self.port),
                "pid": os.getpid(),
                "port": self.port,
                "started": self.started,
                "in_flight": dict(self.in_flight),
                "requests": self.requests,
                "retries": self.retries,
                "reload_error": self.reload_error,
            }
        return 404, {"error": f"no admin route {path}", "routes": ["GET /-/routes", "GET /-/health"]}

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = Connection(reader, writer, response=False)
        peer = writer.get_extra_info("peername")
        client_ip = peer[0] if peer else ""
        self._clients.add(writer)
        try:
            while True:
                head = await client.next()
                if head is EOF or not isinstance(head, Head):
                    break
                self.busy += 1
                try:
                    keep_alive = await self._exchange(client, head, client_ip)
                finally:
                    self.busy -= 1
                if not keep_alive:
                    break
        except httptools.HttpParserUpgrade:
            writer.write(_json_response(501, {"error": "protocol upgrades are not supported"}, False))
        except httptools.HttpParserError:
            writer.write(_json_response(400, {"error": "malformed HTTP request"}, False))
        except (ConnectionError, ClientGone, asyncio.CancelledError):
            pass
        finally:
            self._clients.discard(writer)
            writer.close()

    async def _answer(self, client: Connection, head: Head, body: RequestBody, status: int,
                      payload: Any) -> bool:
        whole = await body.discard() if not body.complete else True
        keep_alive = head.keep_alive and whole and body.complete
        client.writer.write(_json_response(status, payload, keep_alive))
        await client.writer.drain()
        return keep_alive

    async def _exchange(self, client: Connection, head: Head, client_ip: str) -> bool:
        """Answer one request; True to keep the client's connection open."""
        self.requests += 1
        path = head.target.partition("?")[0]
        body = RequestBody(client, head)
        if path.startswith(ADMIN_PREFIX):
            return await self._answer(client, head, body, *self.admin(path))
        host = head.get("host")
        route = self.table.resolve(host, path)
        if isinstance(route, NotRouted):
            return await self._answer(client, head, body, 404, {
                "error": route.reason, "routed": self.table.urls(self.port)})
        if "100-continue" in head.get("expect").lower():
            client.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request_id = head.get("x-request-id")
        if not _REQUEST_ID.match(request_id):
            request_id = uuid.uuid4().hex
        failure = ""
        for attempt in range(ATTEMPTS):
            if attempt:
                self.retries += 1
                _log("retry", request_id=request_id, backend=route.backend.address, reason=failure)
                await asyncio.sleep(RETRY_DELAYS[attempt - 1])
                # The route may have been switched to a new backend in the meantime.
                rerouted = self.table.resolve(host, path)
                if isinstance(rerouted, NotRouted):
                    failure = f"{failure}; then {rerouted.reason}"
                    break
                route = rerouted
            outcome = await self._attempt(client, head, body, route, client_ip, request_id)
            if isinstance(outcome, bool):
                return outcome
            failure = outcome
            if not body.replayable:
                break
        logger.error(json.dumps({"event": "backend_failed", "request_id": request_id,
                                 "model": route.model, "version": route.version,
                                 "backend": route.backend.address, "error": failure}))
        return await self._answer(client, head, body, 502, {
            "error": f"{route.model} v{route.version} ({route.backend.address}) did not answer: {failure}",
            "request_id": request_id})

    async def _attempt(self, client: Connection, head: Head, body: RequestBody, route: Route,
                       client_ip: str, request_id: str) -> Union[bool, str]:
        """Send the request to the route's backend and relay its response. Returns the client's
        keep-alive once a response was relayed, or why it may be retried (nothing was relayed)."""
        address = route.backend.address
        try:
            upstream, reused = await self.pool.acquire(address)
        except (OSError, asyncio.TimeoutError) as e:
            return f"cannot connect: {e or type(e).__name__}"
        self.in_flight[address] += 1
        try:
            return await self._forward(client, head, body, route, upstream, reused, client_ip, request_id)
        except BaseException:
            upstream.close()
            raise
        finally:
            self.in_flight[address] -= 1
            if not self.in_flight[address]:
                del self.in_flight[address]

    async def _forward(self, client: Connection, head: Head, body: RequestBody, route: Route,
                       upstream: Connection, reused: bool, client_ip: str, request_id: str) -> Union[bool, str]:
        has_request_body = body.chunked or bool(head.length)
        writer = upstream.writer
        try:
            writer.write(_request_head(head, head.get("host"), client_ip, request_id, body.chunked))
            if has_request_body:
                async for chunk in body.chunks():
                    writer.write(_frame(chunk, body.chunked))
                    await writer.drain()
                if body.chunked:
                    writer.write(b"0\r\n\r\n")
            await writer.drain()
        except ConnectionError:
            pass  # a backend may answer before reading the whole body (413): read on
        if not has_request_body and not body.complete:
            await body.discard()  # the END of a body-less request
        try:
            response = await self._read(upstream)
            while isinstance(response, Head) and response.status < 200:
                # 1xx: the gateway already answered 100-continue itself; wait for the final one.
                while response is not END and response is not EOF:
                    response = await self._read(upstream)
                response = await self._read(upstream)
        except asyncio.TimeoutError:
            upstream.close()
            return await self._answer(client, head, body, 504, {
                "error": f"{route.model} v{route.version} did not answer within {self.read_timeout:g} s",
                "request_id": request_id})
        except (ConnectionError, httptools.HttpParserError) as e:
            upstream.close()
            return f"connection failed before any response byte: {e or type(e).__name__}"
        if not isinstance(response, Head):
            upstream.close()
            kind = "a kept-alive" if reused else "the"
            return f"the backend closed {kind} connection without answering"
        if response.status == 503 and not self.table.serves(route.backend.address) and body.replayable:
            # A replaced backend draining after SIGTERM refuses new work with 503 before doing
            # any of it: its replacement takes the request.
            upstream.close()
            return "the backend was replaced and is shutting down (503)"
        return await self._relay(client, head, body, route, upstream, response)

    async def _read(self, upstream: Connection) -> Any:
        queue = upstream.events.queue
        if queue:  # usually: a small response arrives whole, in one read
            return queue.popleft()
        return await asyncio.wait_for(upstream.next(), self.read_timeout)

    async def _relay(self, client: Connection, head: Head, body: RequestBody, route: Route,
                     upstream: Connection, response: Head) -> bool:
        has_body = head.method != "HEAD" and response.status not in (204, 304)
        length = response.length
        until_close = has_body and length is None and not response.chunked
        chunked_out = has_body and length is None and head.http11
        keep_alive = head.keep_alive and body.complete and (not has_body or length is not None or chunked_out)
        out = client.writer
        out.write(_response_head(response, route.backend.digest, keep_alive, chunked_out))
        complete = head.method == "HEAD"  # the parser would wait for a body that never comes
        if head.method != "HEAD":
            while True:
                try:
                    event = await self._read(upstream)
                except (ConnectionError, httptools.HttpParserError, asyncio.TimeoutError):
                    event = EOF
                if event is END:
                    complete = True
                    break
                if event is EOF:
                    complete = until_close
                    break
                if event:
                    out.write(_frame(event, chunked_out))
                    await out.drain()
        if not complete:
            # The response was cut short: the client can only tell from a closed connection.
            upstream.close()
            out.close()
            return False
        if chunked_out:
            out.write(b"0\r\n\r\n")
        await out.drain()
        if (head.method != "HEAD" and response.keep_alive and not until_close
                and self.table.serves(route.backend.address)):
            self.pool.release(route.backend.address, upstream)
        else:
            upstream.close()
        return keep_alive


# ----------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ml-gateway", description=__doc__.splitlines()[0])
    parser.add_argument("--routes", type=Path, required=True, help="The route table (JSON) to serve and watch.")
    parser.add_argument("--host", default="127.0.0.1", help="Address to listen on.")
    parser.add_argument("--port", type=int, default=8480, help="Port to listen on; 0 picks a free one.")
    parser.add_argument("--read-timeout", type=float, default=600.0,
                        help="Seconds to wait for a backend's response (then 504).")
    parser.add_argument("--shutdown-grace", type=float, default=30.0,
                        help="Seconds to finish requests in progress after SIGTERM.")
    parser.add_argument("--ready-file", help="Write the bound URL to this file once listening.")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> int:
    gateway = Gateway(args.routes, read_timeout=args.read_timeout)
    gateway.reload()
    try:
        port = await gateway.start(args.host, args.port)
    except OSError as e:
        print(json.dumps({"event": "failed", "error": f"cannot listen on {args.host}:{args.port}: {e}"}),
              file=sys.stderr, flush=True)
        return 1
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGHUP, gateway.reload)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watcher = asyncio.ensure_future(gateway.watch_routes())
    url = f"http://{args.host}:{port}"
    _log("listening", url=url, pid=os.getpid(), generation=gateway.table.generation)
    if args.ready_file:
        write_ready_file(args.ready_file, url)
    await stop.wait()
    watcher.cancel()
    await gateway.stop(args.shutdown_grace)
    _log("stopped", requests=gateway.requests, retries=gateway.retries)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=os.environ.get("ML_LOG_LEVEL", "INFO"), stream=sys.stderr, format="%(message)s")
    args = parse_args(argv)
    try:
        from uvloop import run
    except ImportError:  # the serving environment has it; plain asyncio also works
        run = asyncio.run
    return run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
