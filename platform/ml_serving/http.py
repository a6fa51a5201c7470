"""A small HTTP/1.1 server on asyncio + httptools: keep-alive, pipelining, body limits."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import dataclass
from http import HTTPStatus
from typing import Awaitable, Callable, Optional

import httptools

logger = logging.getLogger("ml_serving.http")


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

    @classmethod
    def json(cls, status: int, payload: object, headers: Optional[dict[str, str]] = None) -> "Response":
        return cls(status, json.dumps(payload, separators=(",", ":")).encode(), headers=headers)


Handler = Callable[[Request], Awaitable[Response]]
_REASONS = {s.value: s.phrase for s in HTTPStatus}


def render(response: Response, keep_alive: bool) -> bytes:
    head = [
        f"HTTP/1.1 {response.status} {_REASONS.get(response.status, '')}",
        f"content-type: {response.content_type}",
        f"content-length: {len(response.body)}",
    ]
    if not keep_alive:
        head.append("connection: close")
    if response.headers:
        head.extend(f"{k}: {v}" for k, v in response.headers.items())
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + response.body


class HttpProtocol(asyncio.Protocol):
    """One connection. Requests are handled concurrently but answered in order."""

    def __init__(self, handler: Handler, max_body_bytes: int, connections: set) -> None:
        self.handler = handler
        self.max_body_bytes = max_body_bytes
        self.connections = connections
        self.transport: Optional[asyncio.Transport] = None
        self.parser = httptools.HttpRequestParser(self)
        self._previous: Optional[asyncio.Future] = None
        self._reset()

    def _reset(self) -> None:
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._body_size = 0
        self._too_large = False

    # asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport
        self.connections.add(self)

    def connection_lost(self, exc) -> None:
        self.connections.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._send_and_close(Response.json(400, {"error": "protocol upgrades are not supported"}))
        except httptools.HttpParserError:
            self._send_and_close(Response.json(400, {"error": "malformed HTTP request"}))

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._reset()

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        key, text = name.decode("latin-1").lower(), value.decode("latin-1")
        # A repeated header is one comma-separated list (RFC 9110, 5.3).
        self._headers[key] = f"{self._headers[key]}, {text}" if key in self._headers else text

    def on_headers_complete(self) -> None:
        length = self._headers.get("content-length")
        if length and length.isdigit() and int(length) > self.max_body_bytes:
            self._too_large = True

    def on_body(self, body: bytes) -> None:
        if self._too_large:
            return
        self._body_size += len(body)
        if self._body_size > self.max_body_bytes:
            self._too_large = True
            self._body.clear()
        else:
            self._body.append(body)

    def on_message_complete(self) -> None:
        if self._too_large:
            self._send_and_close(
                Response.json(413, {"error": f"request body is larger than {self.max_body_bytes} bytes"})
            )
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
        self._previous = asyncio.ensure_future(self._respond(request, keep_alive, previous))

    async def _respond(self, request: Request, keep_alive: bool, previous) -> None:
        response = await self.handler(request)
        if previous is not None and not previous.done():
            await previous  # pipelined requests are answered in order
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(render(response, keep_alive))
        if not keep_alive:
            self.transport.close()

    def _send_and_close(self, response: Response) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(render(response, keep_alive=False))
            self.transport.close()

    @property
    def idle(self) -> bool:
        return self._previous is None or self._previous.done()

    def close_when_idle(self) -> None:
        if self.transport is not None and self.idle:
            self.transport.close()


def write_ready_file(path: str, url: str) -> None:
    """Announce that a server listens at `url`: whoever waits for `path` (the deploy tools, the
    tests) sees no file or the whole URL, never a partial one."""
    with open(path + ".tmp", "w") as f:
        f.write(url)
    os.replace(path + ".tmp", path)
