"""A model worker: loads the handler once, then answers framed requests from the server.

Runs inside the model's own environment, started by the server. It speaks the protocol on two
inherited pipes named in $ML_WORKER_FDS; its stdout is pointed at stderr so that a model's
prints (or a C library's) can never corrupt the protocol stream.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from typing import Any, Mapping

from ml_runtime import protocol
from ml_runtime.codec import InputError
from ml_runtime.handler import LoadedModel
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
        proto_out.write(handle(loaded, header, body))


def handle(loaded: LoadedModel, header: dict[str, Any], body: bytes) -> bytes:
    request_id = header.get("id")
    try:
        endpoint = loaded.endpoints[header["endpoint"]]
        binary_parameter = header.get("binary_parameter")
        if binary_parameter:
            payload: Any = {binary_parameter: body}
        else:
            payload = json.loads(body) if body else {}
        result = endpoint.call(payload)
        out = json.dumps(result, separators=(",", ":")).encode()
        return protocol.encode_frame({"id": request_id, "status": 200}, out)
    except InputError as e:
        error = {"error": "invalid request", "field": e.path, "detail": e.message}
        return protocol.encode_frame({"id": request_id, "status": 422}, json.dumps(error).encode())
    except json.JSONDecodeError as e:
        error = {"error": "malformed JSON", "detail": str(e)}
        return protocol.encode_frame({"id": request_id, "status": 400}, json.dumps(error).encode())
    except Exception:
        # The traceback goes to the log with the request id; the client only gets the id.
        print(f"request {request_id}: the model raised\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        return protocol.encode_frame({"id": request_id, "status": 500}, b"")
