"""The two wire formats of a streaming endpoint's answer (a handler method that is a generator).

A client that sends `Accept: text/event-stream` gets Server-Sent Events: one `data: <item JSON>`
event per item, and, when the stream fails after its first item, a last `event: error` whose
data is the error body (`error`, `status`, `request_id`, ...). Any other client gets
newline-delimited JSON (`application/x-ndjson`): one item per line, and on failure a last line
`{"error": ..., "status": ..., ...}`. Both end when the response ends (chunked on HTTP/1.1).
NDJSON is the default because every HTTP client can read it line by line; SSE is what browsers'
EventSource and the OpenAI-style clients read.
"""

from __future__ import annotations

import json

from ml_http.server import Response

SSE = "sse"
NDJSON = "ndjson"
CONTENT_TYPES = {SSE: "text/event-stream", NDJSON: "application/x-ndjson"}


def negotiate(accept: str) -> str:
    """SSE when the client accepts text/event-stream, else NDJSON."""
    media_types = {part.split(";")[0].strip().lower() for part in accept.split(",")}
    return SSE if CONTENT_TYPES[SSE] in media_types else NDJSON


def item(events: str, data: bytes) -> bytes:
    """One item (its JSON, on one line: the worker writes compact JSON)."""
    return b"data: %b\n\n" % data if events == SSE else data + b"\n"


def error(events: str, response: Response) -> bytes:
    """The last event of a stream that failed after its first item: the error response's body,
    with its status."""
    try:
        body = json.loads(response.body)
    except ValueError:
        body = {"error": response.body.decode(errors="replace")}
    data = json.dumps({**body, "status": response.status}, separators=(",", ":")).encode()
    return b"event: error\ndata: %b\n\n" % data if events == SSE else data + b"\n"
