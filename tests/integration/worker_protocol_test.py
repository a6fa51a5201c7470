"""The worker protocol (platform/ml_runtime/PROTOCOL.md), black-box: a worker process driven
through its two pipes, frames built here with struct from the spec, not with the reference
implementation's module. Every worker implementation runs the same cases: WORKERS lists them
(the Python worker, through the probe model, and the R worker, through tests/models/probe_r; a
worker in another language adds its command and a model with the same endpoints: shout, refuse,
fail, ticks, and the batchable upper).
"""

from __future__ import annotations

import json
import os
import select
import struct
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest
from ml_contract import runtimes
from ml_runtime import r_worker

LENGTHS = struct.Struct(">II")
# Each implementation: its command and what it adds to the environment.
WORKERS = {
    "python": ([str(Path("tests.models.probe/probe/model.pex/__main__.py")), "worker"], {}),
    "r": (r_worker.worker_command(Path("tests/models/probe_r/model.R")), r_worker.R_ENV),
}
START_TIMEOUT = 60


class Worker:
    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        to_worker_r, self._to_worker = os.pipe()
        self._from_worker, from_worker_w = os.pipe()
        self.process = subprocess.Popen(command, env={**os.environ, **env,
                                                      "ML_WORKER_FDS": f"{to_worker_r},{from_worker_w}"},
                                        pass_fds=(to_worker_r, from_worker_w), stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=None)
        os.close(to_worker_r)
        os.close(from_worker_w)

    def send(self, header: dict[str, Any], body: bytes = b"") -> None:
        head = json.dumps(header).encode()
        os.write(self._to_worker, LENGTHS.pack(len(head), len(body)) + head + body)

    def _read(self, size: int, timeout: float) -> bytes:
        data = b""
        deadline = time.monotonic() + timeout
        while len(data) < size:
            if not select.select([self._from_worker], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise AssertionError(f"no frame within {timeout} s")
            chunk = os.read(self._from_worker, size - len(data))
            if not chunk:
                raise EOFError("the worker closed its output")
            data += chunk
        return data

    def receive(self, timeout: float = 10) -> tuple[dict[str, Any], bytes]:
        header_len, body_len = LENGTHS.unpack(self._read(LENGTHS.size, timeout))
        header = json.loads(self._read(header_len, timeout))
        return header, self._read(body_len, timeout) if body_len else b""

    def call(self, endpoint: str, body: Any, request_id: str = "r", raw: Optional[bytes] = None) -> tuple[dict, bytes]:
        self.send({"id": request_id, "endpoint": endpoint, "binary_parameter": None},
                  raw if raw is not None else json.dumps(body).encode())
        return self.receive()

    def close(self) -> int:
        os.close(self._to_worker)
        try:
            return self.process.wait(timeout=10)
        finally:
            os.close(self._from_worker)


@pytest.fixture(params=sorted(WORKERS), scope="module")
def started(request) -> Iterator[tuple[Worker, dict, bytes]]:
    worker = Worker(*WORKERS[request.param])
    try:
        header, body = worker.receive(START_TIMEOUT)
        yield worker, header, body
    finally:
        if worker.process.poll() is None:
            worker.process.kill()
            worker.process.wait()


@pytest.fixture
def worker(started) -> Worker:
    return started[0]


def test_the_worker_says_it_is_ready_and_describes_its_endpoints(started) -> None:
    _, header, body = started
    assert header["type"] == "ready" and isinstance(header["pid"], int) and header["load_seconds"] >= 0
    endpoints = json.loads(body)["endpoints"]
    assert endpoints["ticks"]["streaming"] is True and endpoints["shout"]["streaming"] is False
    assert endpoints["shout"]["request"]["properties"]["text"] == {"type": "string"}
    for spec in endpoints.values():
        assert {"request", "response", "binary_parameter", "binary_response", "streaming", "batch",
                "example", "doc"} <= set(spec)


def test_a_request_is_answered_with_its_id_and_status(worker: Worker) -> None:
    header, body = worker.call("shout", {"text": "hi"}, request_id="r-1")
    assert header == {"id": "r-1", "status": 200} and json.loads(body) == "HI"


@pytest.mark.parametrize("endpoint, body, raw, status, error", [
    ("shout", None, b"{not json", 400, "malformed JSON"),
    ("shout", {"text": 5}, None, 422, "invalid request"),
    ("refuse", {"reason": "out of range"}, None, 422, "the model rejected the input"),
])
def test_errors_are_statuses_with_their_error_kind(worker: Worker, endpoint: str, body: Any, raw: Optional[bytes],
                                                   status: int, error: str) -> None:
    header, answer = worker.call(endpoint, body, raw=raw)
    assert header["status"] == status and json.loads(answer)["error"] == error


def test_a_model_exception_is_a_500_with_no_body(worker: Worker) -> None:
    header, body = worker.call("fail", {"message": "boom"})
    assert header["status"] == 500 and body == b""
    assert worker.call("shout", {"text": "after"})[0]["status"] == 200  # and the worker goes on


def test_a_batch_is_one_frame_each_request_with_its_own_status(worker: Worker) -> None:
    bodies = [json.dumps({"text": "a"}).encode(), json.dumps({"text": "refuse"}).encode()]
    worker.send({"id": ["b1", "b2"], "endpoint": "upper", "binary_parameter": None,
                 "sizes": [len(b) for b in bodies]}, b"".join(bodies))
    header, body = worker.receive()
    assert header["id"] == ["b1", "b2"] and header["status"] == [200, 422]
    first, second = body[:header["sizes"][0]], body[header["sizes"][0]:]
    assert len(second) == header["sizes"][1]
    assert json.loads(first)["text"] == "A" and json.loads(second)["error"] == "the model rejected the input"


def test_a_stream_is_chunk_frames_then_the_final_frame(worker: Worker) -> None:
    worker.send({"id": "s", "endpoint": "ticks", "binary_parameter": None}, json.dumps({"to": 3}).encode())
    frames = [worker.receive() for _ in range(4)]
    assert [h for h, _ in frames[:3]] == [{"id": "s", "chunk": True}] * 3
    assert [json.loads(b)["n"] for _, b in frames[:3]] == [0, 1, 2]
    assert frames[3] == ({"id": "s", "status": 200}, b"")


def test_a_failure_after_the_first_item_ends_the_stream_with_its_status(worker: Worker) -> None:
    worker.send({"id": "f", "endpoint": "ticks", "binary_parameter": None}, json.dumps({"to": 5, "fail_at": 1}).encode())
    assert worker.receive()[0] == {"id": "f", "chunk": True}
    header, body = worker.receive()
    assert header == {"id": "f", "status": 422} and json.loads(body)["error"] == "the model rejected the input"


def test_a_cancel_stops_the_stream_with_499(worker: Worker) -> None:
    worker.send({"id": "c", "endpoint": "ticks", "binary_parameter": None},
                json.dumps({"to": 1000, "delay": 0.05}).encode())
    assert worker.receive()[0] == {"id": "c", "chunk": True}
    worker.send({"cancel": "c"})
    started = time.monotonic()
    while True:
        header, _ = worker.receive()
        if "status" in header:
            break
    assert header == {"id": "c", "status": 499} and time.monotonic() - started < 2
    worker.send({"cancel": "c"})  # for a stream that already ended: ignored
    assert worker.call("shout", {"text": "next"}, request_id="n")[0] == {"id": "n", "status": 200}


def test_closing_its_input_stops_the_worker_cleanly(started) -> None:
    assert started[0].close() == 0


def test_the_manifest_names_the_r_runtime_as_the_plugin_writes_it() -> None:
    # The runtime cannot import ml_contract, so it repeats the name.
    assert r_worker.RUNTIME == runtimes.R
