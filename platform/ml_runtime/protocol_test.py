from __future__ import annotations

import io

import pytest

from ml_runtime import protocol


def test_frames_round_trip_with_binary_bodies() -> None:
    stream = io.BytesIO(
        protocol.encode_frame({"id": "a", "endpoint": "predict"}, b"\x00\xffraw")
        + protocol.encode_frame({"id": "b"})
    )
    assert protocol.read_frame(stream) == ({"id": "a", "endpoint": "predict"}, b"\x00\xffraw")
    assert protocol.read_frame(stream) == ({"id": "b"}, b"")
    assert protocol.read_frame(stream) is None  # clean end of stream


def test_truncated_frame_is_an_error() -> None:
    frame = protocol.encode_frame({"id": "a"}, b"body")
    with pytest.raises(EOFError):
        protocol.read_frame(io.BytesIO(frame[:-2]))


class Trickle(io.RawIOBase):
    """Hands out one byte per read, as a pipe may."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        chunk, self.data = self.data[:1], self.data[1:]
        return chunk


def test_short_reads_are_reassembled() -> None:
    frame = protocol.encode_frame({"id": "x"}, b"0123456789")
    assert protocol.read_frame(Trickle(frame)) == ({"id": "x"}, b"0123456789")


def test_a_batch_answer_round_trips() -> None:
    frame = protocol.encode_batch({"id": ["a", "b", "c"]}, [(200, b'{"x":1}'), (422, b""), (500, b"{}")])
    header, body = protocol.read_frame(io.BytesIO(frame))
    assert header["id"] == ["a", "b", "c"] and header[protocol.BATCH_STATUSES] == [200, 422, 500]
    assert protocol.split_batch(body, header[protocol.BATCH_SIZES]) == [b'{"x":1}', b"", b"{}"]
    with pytest.raises(ValueError, match="lists 3"):
        protocol.split_batch(b"abcd", [1, 2])
