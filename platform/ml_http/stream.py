"""HTTP/1.1 messages as a stream of events pulled one at a time: a head, body chunks, the end.

What a proxy needs: one coroutine per connection reads a message at a time, bodies are never
held whole, and TCP gives the backpressure.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass
from typing import Any, Deque, List, Optional, Tuple

import httptools

READ_SIZE = 256 * 1024

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


class Events:
    """httptools' callbacks turned into a queue of events: Head, body bytes, END."""

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
        self.events = Events(response)

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


def frame(chunk: bytes, chunked: bool) -> bytes:
    return b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk
