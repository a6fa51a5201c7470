"""A model worker: loads the handler once, then answers framed requests from the server.

Runs inside the model's own environment, started by the server. It speaks the protocol on two
inherited pipes named in $ML_WORKER_FDS; its stdout is pointed at stderr so that a model's
prints (or a C library's) can never corrupt the protocol stream.
"""

from __future__ import annotations

import json
import os
import select
import sys
import time
import traceback
from typing import Any, BinaryIO, Mapping

from ml_runtime import protocol, wire
from ml_runtime.codec import InputError
from ml_runtime.errors import (
    INVALID_REQUEST, MALFORMED_JSON, MODEL_REJECTED_INPUT, NOT_CACHED, UPSTREAM_FAILED, NotCached, UpstreamError,
)
from ml_runtime.handler import Endpoint, LoadedModel
from ml_runtime.schema import describe_endpoints


def main(model: Mapping[str, Any]) -> int:
    fds = os.environ.pop(protocol.WORKER_FDS_ENV, "")
    if not fds:
        print("error: `worker` is started by the model server, not by hand; use `serve`.", file=sys.stderr)
        return 2
    read_fd, write_fd = (int(fd) for fd in fds.split(","))
    proto_in = os.fdopen(read_fd, "rb", buffering=0)
    proto_out = os.fdopen(write_fd, "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    started = time.monotonic()
    try:
        loaded = LoadedModel(model["handler"])
        description = describe_endpoints(loaded.endpoints)
    except Exception:
        traceback.print_exc()
        proto_out.write(protocol.encode_frame({"type": "failed", "error": traceback.format_exc(limit=5)}))
        return 1
    proto_out.write(
        protocol.encode_frame(
            {"type": "ready", "pid": os.getpid(), "load_seconds": time.monotonic() - started},
            json.dumps(description).encode(),
        )
    )

    while True:
        frame = protocol.read_frame(proto_in)
        if frame is None:  # the server closed our input: shut down cleanly
            return 0
        header, body = frame
        if protocol.CANCEL in header:
            continue  # for a stream that ended before the cancel arrived
        endpoint = loaded.endpoints.get(header.get("endpoint", ""))
        if endpoint is not None and endpoint.streaming and protocol.BATCH_SIZES not in header:
            proto_out.write(stream(endpoint, header, body, proto_in, proto_out))
        else:
            proto_out.write(handle(loaded, header, body))


def stream(endpoint: Endpoint, header: dict[str, Any], body: bytes, proto_in: BinaryIO, proto_out: BinaryIO) -> bytes:
    """A streaming request: a chunk frame per item, written as it is made; returns the final
    frame. Before each item it looks for the server's cancel (the client went away)."""
    request_id = header.get("id")
    items = None
    try:
        items = endpoint.stream(_payload(header, body))
        while not _cancelled(proto_in, request_id):
            try:
                item = next(items)
            except StopIteration:
                return protocol.encode_frame({"id": request_id, "status": 200})
            status, answer = _result(item, request_id)
            if status != 200:
                return protocol.encode_frame({"id": request_id, "status": status}, answer)
            proto_out.write(protocol.encode_frame({"id": request_id, protocol.CHUNK: True}, answer))
        return protocol.encode_frame({"id": request_id, "status": protocol.CANCELLED_STATUS})
    except Exception as e:  # noqa: BLE001 - the stream's last event
        status, answer = _error(e, request_id)
        return protocol.encode_frame({"id": request_id, "status": status}, answer)
    finally:
        if items is not None:
            items.close()  # the model's generator: its `finally` runs now, not at garbage collection


def _cancelled(proto_in: BinaryIO, request_id: Any) -> bool:
    """Whether the server has cancelled this request (a frame waits on the pipe: while a worker
    streams, the server sends it nothing else)."""
    if not select.select([proto_in], [], [], 0)[0]:
        return False
    frame = protocol.read_frame(proto_in)
    if frame is None:
        raise EOFError("the server closed the pipe")
    return frame[0].get(protocol.CANCEL) == request_id


def handle(loaded: LoadedModel, header: dict[str, Any], body: bytes) -> bytes:
    """One frame of the server's: a request, or a batch of them (`sizes` set)."""
    if protocol.BATCH_SIZES in header:
        return _handle_batch(loaded, header, body)
    request_id = header.get("id")
    try:
        endpoint = loaded.endpoints[header["endpoint"]]
        status, answer = _result(endpoint.call(_payload(header, body)), request_id)
    except Exception as e:  # noqa: BLE001 - every error is the request's answer
        status, answer = _error(e, request_id)
    return protocol.encode_frame({"id": request_id, "status": status}, answer)


def _handle_batch(loaded: LoadedModel, header: dict[str, Any], body: bytes) -> bytes:
    """The requests of a batchable endpoint that arrived together: one model call, and one
    status and answer per request, in order."""
    ids = header["id"]
    endpoint = loaded.endpoints[header["endpoint"]]
    outcomes: list[Any] = [None] * len(ids)
    payloads, positions = [], []
    for position, item in enumerate(protocol.split_batch(body, header[protocol.BATCH_SIZES])):
        try:
            payloads.append(_payload(header, item))
            positions.append(position)
        except wire.MalformedJSON as e:
            outcomes[position] = e
    try:
        for position, outcome in zip(positions, endpoint.call_batch(payloads)):
            outcomes[position] = outcome
    except Exception as e:  # noqa: BLE001 - the batch machinery itself: every request's answer
        for position in positions:
            outcomes[position] = e
    answers = [_error(o, i) if isinstance(o, BaseException) else _result(o, i) for o, i in zip(outcomes, ids)]
    return protocol.encode_batch({"id": ids}, answers)


def _payload(header: dict[str, Any], body: bytes) -> Any:
    binary_parameter = header.get("binary_parameter")
    return {binary_parameter: body} if binary_parameter else (wire.loads(body) if body else {})


def _result(result: Any, request_id: Any) -> tuple[int, bytes]:
    if isinstance(result, bytes):  # an endpoint annotated `-> bytes`: its answer as it is
        return 200, result
    try:
        return 200, wire.dumps(result)
    except wire.NonFiniteNumber as e:
        _log(request_id, str(e))
        return 500, wire.dumps({"error": str(e)})
    except (TypeError, ValueError):
        _log(request_id, f"the result cannot be sent as JSON\n{traceback.format_exc()}")
        return 500, b""


def _error(error: BaseException, request_id: Any) -> tuple[int, bytes]:
    """The status and JSON body the server relays for an error of one request."""
    if isinstance(error, InputError):
        return 422, wire.dumps({"error": INVALID_REQUEST, "field": error.path, "detail": error.message})
    if isinstance(error, wire.MalformedJSON):
        return 400, wire.dumps({"error": MALFORMED_JSON, "detail": str(error)})
    if isinstance(error, NotCached):
        return 409, wire.dumps({"error": NOT_CACHED, "detail": str(error)})
    if isinstance(error, UpstreamError):
        _log(request_id, f"upstream failure ({error.status}): {error}")
        return error.status, wire.dumps({"error": UPSTREAM_FAILED, "detail": str(error),
                                         "upstream_status": error.upstream_status})
    if isinstance(error, ValueError):
        # The documented way for a model to refuse an input its schema cannot rule out.
        _log(request_id, f"the model rejected the input: {error}")
        return 422, wire.dumps({"error": MODEL_REJECTED_INPUT, "detail": str(error)})
    # The traceback goes to the log with the request id; the client only gets the id.
    trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    _log(request_id, f"the model raised\n{trace}")
    return 500, b""


def _log(request_id: Any, message: str) -> None:
    print(f"request {request_id}: {message}", file=sys.stderr, flush=True)
