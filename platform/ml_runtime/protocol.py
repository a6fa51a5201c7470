"""Framing between the server (serving environment) and a worker (model environment).

Each message is one frame: two 4-byte big-endian lengths, a JSON header of that many bytes and
a raw body of that many bytes. Bodies stay bytes end to end, so binary inputs never pay for
base64. Standard library only: both environments import this module.
"""

from __future__ import annotations

import json
import struct
from typing import Any, BinaryIO, List, Optional, Sequence, Tuple

_LENGTHS = struct.Struct(">II")
LENGTHS_SIZE = _LENGTHS.size

# Names the two inherited file descriptors ("<read>,<write>") a worker speaks the protocol on;
# stdout stays free for the model's prints.
WORKER_FDS_ENV = "ML_WORKER_FDS"

# A batch is one frame too: its header lists the request ids (`id`) and the size of each
# request's body (BATCH_SIZES), its body is those bodies one after the other; the answer lists
# a status per request and the sizes of the answers, concatenated the same way.
BATCH_SIZES = "sizes"
BATCH_STATUSES = "status"

# A streaming endpoint answers with chunk frames (header {"id": ..., CHUNK: true}, body: one
# item's JSON) as the model yields them, then the usual final frame (its status; an error's
# body). The server may send {CANCEL: <id>} meanwhile (the client went away): the worker closes
# the model's generator and ends the stream with CANCELLED_STATUS.
CHUNK = "chunk"
CANCEL = "cancel"
CANCELLED_STATUS = 499


def encode_frame(header: dict[str, Any], body: bytes = b"") -> bytes:
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    return _LENGTHS.pack(len(header_bytes), len(body)) + header_bytes + body


def encode_batch(header: dict[str, Any], parts: Sequence[Tuple[int, bytes]]) -> bytes:
    """A batch answer: `header` plus a status and a body per request."""
    return encode_frame({**header, BATCH_STATUSES: [status for status, _ in parts],
                         BATCH_SIZES: [len(body) for _, body in parts]}, b"".join(body for _, body in parts))


def split_batch(body: bytes, sizes: Sequence[int]) -> List[bytes]:
    """The bodies of a batch frame, by the sizes its header lists."""
    parts, offset = [], 0
    for size in sizes:
        parts.append(body[offset:offset + size])
        offset += size
    if offset != len(body):
        raise ValueError(f"a batch frame of {len(body)} body bytes lists {offset}")
    return parts


def decode_lengths(prefix: bytes) -> Tuple[int, int]:
    return _LENGTHS.unpack(prefix)


def read_frame(stream: BinaryIO) -> Optional[Tuple[dict[str, Any], bytes]]:
    """Blocking read of one frame; None on a clean end of stream."""
    prefix = _read_exactly(stream, LENGTHS_SIZE)
    if prefix is None:
        return None
    header_len, body_len = decode_lengths(prefix)
    header = _read_exactly(stream, header_len)
    body = _read_exactly(stream, body_len) if body_len else b""
    if header is None or body is None:
        raise EOFError("stream ended inside a frame")
    return json.loads(header), body


def _read_exactly(stream: BinaryIO, size: int) -> Optional[bytes]:
    chunks = []
    remaining = size
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            if remaining == size:
                return None
            raise EOFError("stream ended inside a frame")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)
