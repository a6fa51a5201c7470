"""A small HTTP/1.1 server on asyncio + httptools: whole requests to a handler, keep-alive,
pipelining, limits and timeouts."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable, Optional

import httptools

from ml_http.messages import encode_head, status_line
from ml_http.stream import frame
from ml_runtime import wire


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-case names
    body: bytes


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: Optional[dict[str, str]] = None
    # A streamed body (`body` unused): each part is sent as it comes, chunked on HTTP/1.1.
    stream: Optional[AsyncIterator[bytes]] = None

    @classmethod
    def json(cls, status: int, payload: object, headers: Optional[dict[str, str]] = None) -> "Response":
        return cls(status, wire.dumps(payload), headers=headers)


Handler = Callable[[Request], Awaitable[Response]]


def render(response: Response, keep_alive: bool, chunked: bool = False) -> bytes:
    """The whole response; of a streamed one, its head only (its parts follow: chunked, or
    until the connection closes)."""
    fields = [f"content-type: {response.content_type}"]
    if response.stream is None:
        fields.append(f"content-length: {len(response.body)}")
    elif chunked:
        fields.append("transfer-encoding: chunked")
    if response.headers:
        fields.extend(f"{k}: {v}" for k, v in response.headers.items())
    head = encode_head(status_line(response.status), fields, keep_alive)
    return head if response.stream is not None else head + response.body


@dataclass(frozen=True)
class HttpLimits:
    """What one connection may send before the server answers it with an error and closes it."""

    max_body_bytes: int = 32 * 2**20  # else 413
    max_url_bytes: int = 8 * 2**10  # else 414
    max_header_bytes: int = 16 * 2**10  # request line and header fields, else 431
    read_timeout: float = 60.0  # seconds from a request's first byte to its last, else 408
    # Seconds a kept-alive connection may sit idle before it is closed. Longer than the idle
    # timeout of the load balancers in front (ALB: 60 s), so that they close first and never
    # send a request on a connection this server is closing.
    idle_timeout: float = 75.0


# After an early error answer (413, 431, ...) a client may still be sending: reading and
# dropping that a little longer, rather than closing at once, keeps the kernel from resetting
# the connection before the client has read the answer.
_LINGER_SECONDS = 1.0


class HttpProtocol(asyncio.Protocol):
    """One connection. Requests are handled concurrently but answered in order."""

    def __init__(self, handler: Handler, limits: HttpLimits, connections: set) -> None:
        self.handler = handler
        self.limits = limits
        self.connections = connections
        self.transport: Optional[asyncio.Transport] = None
        self.parser = httptools.HttpRequestParser(self)
        self._previous: Optional[asyncio.Future] = None
        self._responding: set[asyncio.Future] = set()  # requests not yet answered
        self._loop = asyncio.get_running_loop()
        # Timeouts cost no timer per request: requests note the time, and one check per
        # connection, rescheduled to the next deadline, enforces both limits.
        self._timer: Optional[asyncio.TimerHandle] = None
        self._last_activity = self._loop.time()
        self._request_started: Optional[float] = None  # while a request is being received
        self._rejected = False
        self._head_bytes = 0  # bytes received while the current request's head is incomplete
        self._in_head = True
        self._reset()

    def _reset(self) -> None:
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._body_size = 0

    # asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport
        self.connections.add(self)
        self._schedule_check(min(self.limits.read_timeout, self.limits.idle_timeout))

    def connection_lost(self, exc) -> None:
        self.connections.discard(self)
        self._cancel_timer()
        self.transport = None
        # Nobody is left to read the answers: cancelling drops the requests that still queue
        # for a worker (a client that timed out must not keep the model busy), and frees
        # their memory at once.
        for responding in self._responding:
            responding.cancel()

    def data_received(self, data: bytes) -> None:
        if self._rejected:
            return  # lingering after an error answer: drop what the client still sends
        if self._in_head:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject(400, "protocol upgrades are not supported")
        except httptools.HttpParserError:
            if not self._rejected:
                self._reject(400, "malformed HTTP request")
        started = self._request_started
        if started is not None and not self._rejected:
            # A request spans packets: make sure the check comes by its read deadline.
            deadline = started + self.limits.read_timeout
            if self._timer is None or self._timer.when() > deadline:
                self._cancel_timer()
                self._schedule_check(max(0.0, deadline - self._loop.time()))
        if self._in_head and self._head_bytes > self.limits.max_header_bytes + self.limits.max_url_bytes:
            self._reject(431, f"the request's header fields are larger than {self.limits.max_header_bytes} bytes")

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._reset()
        self._in_head = True
        self._request_started = self._loop.time()

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.limits.max_url_bytes:
            self._reject(414, f"the request target is longer than {self.limits.max_url_bytes} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        key, text = name.decode("latin-1").lower(), value.decode("latin-1")
        # A repeated header is one comma-separated list (RFC 9110, 5.3).
        self._headers[key] = f"{self._headers[key]}, {text}" if key in self._headers else text

    def on_headers_complete(self) -> None:
        # The whole head arrived: measure it exactly (data_received's count may include body bytes).
        if sum(len(k) + len(v) + 4 for k, v in self._headers.items()) > self.limits.max_header_bytes:
            self._reject(431, f"the request's header fields are larger than {self.limits.max_header_bytes} bytes")
        self._in_head = False
        length = self._headers.get("content-length")
        if length and length.isdigit() and int(length) > self.limits.max_body_bytes:
            self._reject_too_large()

    def on_body(self, body: bytes) -> None:
        if self._rejected:
            return
        self._body_size += len(body)
        if self._body_size > self.limits.max_body_bytes:
            self._reject_too_large()
        else:
            self._body.append(body)

    def on_message_complete(self) -> None:
        self._request_started = None
        self._in_head, self._head_bytes = True, 0
        if self._rejected:
            return
        url = httptools.parse_url(self._url)
        request = Request(
            method=self.parser.get_method().decode(),
            path=url.path.decode("latin-1"),
            query=(url.query or b"").decode("latin-1"),
            headers=self._headers,
            body=b"".join(self._body),
        )
        keep_alive = self.parser.should_keep_alive()
        previous = self._previous
        self._previous = responding = asyncio.ensure_future(self._respond(request, keep_alive, previous))
        self._responding.add(responding)
        responding.add_done_callback(self._responding.discard)

    async def _respond(self, request: Request, keep_alive: bool, previous) -> None:
        response = await self.handler(request)
        if previous is not None and not previous.done():
            await previous  # pipelined requests are answered in order
        if self.transport is None or self.transport.is_closing() or self._rejected:
            return
        if response.stream is not None:
            await self._send_stream(response, keep_alive, http11=self.parser.get_http_version() == "1.1")
            return
        self.transport.write(render(response, keep_alive))
        self._last_activity = self._loop.time()
        if not keep_alive:
            self.transport.close()

    async def _send_stream(self, response: Response, keep_alive: bool, http11: bool) -> None:
        """Each part as it comes: chunked on HTTP/1.1; to HTTP/1.0, until the connection closes."""
        assert response.stream is not None
        keep_alive = keep_alive and http11
        transport = self.transport
        assert transport is not None
        transport.write(render(response, keep_alive, chunked=http11))
        try:
            async for part in response.stream:
                if part and not transport.is_closing():
                    transport.write(frame(part, http11))
                    self._last_activity = self._loop.time()
        finally:
            await response.stream.aclose()  # type: ignore[attr-defined]
        if transport.is_closing():
            return
        if http11:
            transport.write(b"0\r\n\r\n")
        self._last_activity = self._loop.time()
        if not keep_alive:
            transport.close()

    # limits and timers
    def _reject_too_large(self) -> None:
        self._reject(413, f"request body is larger than {self.limits.max_body_bytes} bytes")

    def _reject(self, status: int, error: str) -> None:
        """Answer an error the request's own route never sees, then close the connection."""
        if self._rejected or self.transport is None or self.transport.is_closing():
            return
        self._rejected = True
        self._cancel_timer()
        self.transport.write(render(Response.json(status, {"error": error}), keep_alive=False))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._timer = self._loop.call_later(_LINGER_SECONDS, self._close)

    def _check_timeouts(self) -> None:
        self._timer = None
        if self.transport is None or self._rejected:
            return
        now, limits = self._loop.time(), self.limits
        if self._request_started is not None:
            late = now - self._request_started
            if late >= limits.read_timeout:
                return self._reject(408, f"the request was not received within {limits.read_timeout:g} s")
            self._schedule_check(limits.read_timeout - late)
        elif self.idle:
            quiet = now - self._last_activity
            if quiet >= limits.idle_timeout:
                return self._close()
            self._schedule_check(limits.idle_timeout - quiet)
        else:  # a response is being computed: the model's own timeout applies, look again later
            self._schedule_check(limits.idle_timeout)

    def _schedule_check(self, seconds: float) -> None:
        self._timer = self._loop.call_later(seconds, self._check_timeouts)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    @property
    def idle(self) -> bool:
        return self._previous is None or self._previous.done()

    def close_when_idle(self) -> None:
        if self.transport is not None and self.idle:
            self.transport.close()

