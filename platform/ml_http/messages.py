"""How an HTTP/1.1 head is written, and which request ids are passed on."""

from __future__ import annotations

import re
import uuid
from http import HTTPStatus
from typing import Iterable

REASONS = {s.value: s.phrase for s in HTTPStatus}

# A client's x-request-id is kept when it looks like an id (so that logs can be joined across
# hops), and replaced otherwise: it is echoed in headers and logs.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def status_line(status: int, reason: str = "") -> str:
    return f"HTTP/1.1 {status} {reason or REASONS.get(status, '')}"


def encode_head(start_line: str, fields: Iterable[str], keep_alive: bool = True) -> bytes:
    """A head from its start line and `name: value` field lines; `connection: close` unless
    `keep_alive`."""
    lines = [start_line, *fields]
    if not keep_alive:
        lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def request_id(offered: str) -> str:
    """`offered` if it is a usable request id, else a new one."""
    return offered if _REQUEST_ID.match(offered) else uuid.uuid4().hex
