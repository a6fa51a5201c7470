"""The gateway's proxy: client connections in, backend connections out, both streamed.

Bodies are streamed both ways (Content-Length or chunked), backend connections are kept alive
and reused. A request is retried on the (possibly new) route only when its backend gave no byte
of a response: it could not be reached, it closed a kept-alive connection before answering, or
it was replaced and refused the request because it is shutting down. The request body is kept
for that, up to REPLAY_LIMIT bytes.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, AsyncIterator, Dict, List, Optional, Tuple, Union

import httptools

from ml_contract.route_table import ADMIN_ROUTES_PATH, RouteTable
from ml_gateway import index
from ml_gateway.routes import NotRouted, Route, hostname, resolve
from ml_http.messages import encode_head, request_id as usable_request_id, status_line
from ml_http.stream import END, EOF, READ_SIZE, Connection, Head, frame

logger = logging.getLogger("ml_gateway")

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



# ----------------------------------------------------------------------------------------------
# Client bodies and backend connections


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
    fields = []
    forwarded_for = ""
    for name, value in head.headers:
        if name in dropped:
            continue
        if name == "x-forwarded-for":
            forwarded_for = f"{forwarded_for}, {value}" if forwarded_for else value
            continue
        if name == "x-request-id":
            continue
        fields.append(f"{name}: {value}")
    if chunked:
        fields.append("transfer-encoding: chunked")
    fields.append(f"x-forwarded-for: {forwarded_for + ', ' if forwarded_for else ''}{client_ip}")
    fields.append(f"x-forwarded-host: {route_host}")
    fields.append("x-forwarded-proto: http")
    fields.append(f"x-request-id: {request_id}")
    return encode_head(f"{head.method} {head.target} HTTP/1.1", fields)


def _response_head(head: Head, digest: str, keep_alive: bool, chunked: bool) -> bytes:
    dropped = HOP_BY_HOP | head.connection_tokens()
    fields = [f"{name}: {value}" for name, value in head.headers if name not in dropped]
    if chunked:
        fields.append("transfer-encoding: chunked")
    if digest:
        fields.append(f"x-ml-digest: {digest}")
    return encode_head(status_line(head.status, head.reason), fields, keep_alive)


def _json_response(status: int, payload: Any, keep_alive: bool) -> bytes:
    return _response(status, json.dumps(payload, indent=1).encode() + b"\n", "application/json", keep_alive)


def _response(status: int, body: bytes, content_type: str, keep_alive: bool) -> bytes:
    fields = [f"content-type: {content_type}", f"content-length: {len(body)}"]
    return encode_head(status_line(status), fields, keep_alive) + body


def log_event(event: str, **fields: Any) -> None:
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
        self.rates = index.RequestRates()  # per model version, for the index page
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
            table = RouteTable.load(self.routes_path)
        except (OSError, ValueError) as e:
            self.reload_error = str(e)
            logger.error(json.dumps({"event": "reload_failed", "error": str(e),
                                     "serving_generation": self.table.generation}))
            return False
        # One assignment: every request sees either the old table or the new one.
        self.table, self.reload_error = table, None
        self.pool.keep_only(table.addresses())
        log_event("routes", generation=table.generation, urls=table.urls(self.port) if self.port else None)
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
        if path == ADMIN_ROUTES_PATH:
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
        return 404, {"error": f"no admin route {path}", "routes": [f"GET {ADMIN_ROUTES_PATH}", "GET /-/health"]}

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
                      payload: Any, content_type: Optional[str] = None) -> bool:
        """Answer locally: `payload` as JSON, or bytes of `content_type`."""
        whole = await body.discard() if not body.complete else True
        keep_alive = head.keep_alive and whole and body.complete
        client.writer.write(_json_response(status, payload, keep_alive) if content_type is None
                            else _response(status, payload, content_type, keep_alive))
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
        if index.is_index(self.table, hostname(host), path):
            table = self.table
            page = index.render(table, self.port, await index.readiness(table), self.rates)
            return await self._answer(client, head, body, 200, page, "text/html; charset=utf-8")
        route = resolve(self.table, host, path)
        if isinstance(route, NotRouted):
            return await self._answer(client, head, body, 404, {
                "error": route.reason, "routed": self.table.urls(self.port)})
        self.rates.record(route.model, route.version)
        if "100-continue" in head.get("expect").lower():
            client.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request_id = usable_request_id(head.get("x-request-id"))
        failure = ""
        for attempt in range(ATTEMPTS):
            if attempt:
                self.retries += 1
                log_event("retry", request_id=request_id, backend=route.backend.address, reason=failure)
                await asyncio.sleep(RETRY_DELAYS[attempt - 1])
                # The route may have been switched to a new backend in the meantime.
                rerouted = resolve(self.table, host, path)
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
                    writer.write(frame(chunk, body.chunked))
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
                    out.write(frame(event, chunked_out))
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


