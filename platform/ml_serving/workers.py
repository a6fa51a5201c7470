"""A pool of model worker processes, each started from the model's own environment."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import subprocess
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

from ml_runtime import protocol
from ml_runtime.batching import BatchPolicy

logger = logging.getLogger("ml_serving.workers")


class QueueFull(Exception):
    """Every worker is busy and the queue is at its bound."""


class WorkerLost(Exception):
    """The worker died (crash, os._exit, OOM kill) while handling the request."""


class WorkerTimeout(Exception):
    """The request took longer than its time limit."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no answer within {seconds:g} s")
        self.seconds = seconds


@dataclass(frozen=True)
class WorkerResponse:
    status: int
    body: bytes


@dataclass
class _Job:
    endpoint: str
    body: bytes
    request_id: str
    binary_parameter: Optional[str]
    future: asyncio.Future = field(repr=False)
    timeout: float = 0.0
    # A streaming request: its items as they arrive (the final answer is the future's).
    chunks: Optional[asyncio.Queue] = field(default=None, repr=False)
    worker: Optional["_Worker"] = field(default=None, repr=False)  # while one runs it


class Stream:
    """A streaming request, as its client reads it: `next()` gives each item's JSON as the
    worker sends it, then the final WorkerResponse (200, or the error that ended the stream);
    `cancel()` when the client is gone stops the model's generator."""

    def __init__(self, job: _Job) -> None:
        self._job = job
        assert job.chunks is not None
        self._chunks: asyncio.Queue = job.chunks

    async def next(self) -> Union[bytes, "WorkerResponse"]:
        """The next item, or the final answer; raises what the pool failed the request with
        (QueueFull, WorkerTimeout, WorkerLost)."""
        if self._chunks.empty() and not self._job.future.done():
            getter = asyncio.ensure_future(self._chunks.get())
            try:
                await asyncio.wait({getter, self._job.future}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not getter.done():
                    getter.cancel()
            if getter.done() and not getter.cancelled():
                return getter.result()
        if not self._chunks.empty():  # every chunk arrives before the final frame
            return self._chunks.get_nowait()
        return self._job.future.result()

    def cancel(self) -> None:
        job = self._job
        if not job.future.done():
            job.future.cancel()  # still queued: it is dropped
        if job.worker is not None:
            job.worker.cancel(job.request_id)


@dataclass
class _Futures:
    """The futures of a batch's requests, answered together (a lost worker fails them all)."""

    futures: list[asyncio.Future]

    def done(self) -> bool:
        return all(f.done() for f in self.futures)

    def set_exception(self, error: BaseException) -> None:
        for f in self.futures:
            if not f.done():
                f.set_exception(error)

    def set_result(self, responses: list["WorkerResponse"]) -> None:
        for f, response in zip(self.futures, responses):
            if not f.done():
                f.set_result(response)


@dataclass
class _Batch:
    """Requests to one batchable endpoint that a worker answers with one model call. It queues
    like a _Job: `future` and `timeout` stand for all of its requests."""

    endpoint: str
    binary_parameter: Optional[str]
    jobs: list[_Job]
    future: _Futures = field(init=False)
    timeout: float = field(init=False)

    def __post_init__(self) -> None:
        self.future = _Futures([job.future for job in self.jobs])
        self.timeout = min(job.timeout for job in self.jobs)


class _Batcher:
    """Gathers the requests to one batchable endpoint: the first waits up to `max_wait_ms` for
    others (up to `max_batch_size`), then they queue for a worker as one batch."""

    def __init__(self, pool: "WorkerPool", endpoint: str, binary_parameter: Optional[str],
                 policy: BatchPolicy) -> None:
        self.pool, self.endpoint, self.binary_parameter, self.policy = pool, endpoint, binary_parameter, policy
        self.pending: list[_Job] = []
        self._timer: Optional[asyncio.TimerHandle] = None

    def add(self, job: _Job) -> None:
        if len(self.pending) >= self.pool.queue.maxsize:
            raise QueueFull()
        self.pending.append(job)
        if len(self.pending) >= self.policy.max_batch_size:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.policy.max_wait_ms / 1000, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        jobs = [job for job in self.pending if not job.future.done()]  # clients still waiting
        self.pool.count_abandoned(len(self.pending) - len(jobs))
        self.pending = []
        if not jobs:
            return
        try:
            self.pool.queue.put_nowait(_Batch(self.endpoint, self.binary_parameter, jobs))
        except asyncio.QueueFull:
            for job in jobs:
                job.future.set_exception(QueueFull())


class _Worker:
    """One worker process and the pipes to it; handles one job at a time."""

    def __init__(self, index: int, command: Sequence[str], env: dict[str, str]) -> None:
        self.index = index
        self.command = list(command)
        self.env = env
        self.process: Optional[subprocess.Popen] = None
        self.reader: Optional[asyncio.StreamReader] = None
        self.writer: Optional[asyncio.WriteTransport] = None
        self.description: Optional[dict[str, Any]] = None

    async def start(self) -> dict[str, Any]:
        """Start the process and wait until the model is loaded; returns its description."""
        to_worker_r, to_worker_w = os.pipe()
        from_worker_r, from_worker_w = os.pipe()
        self.process = subprocess.Popen(
            self.command,
            env={**self.env, protocol.WORKER_FDS_ENV: f"{to_worker_r},{from_worker_w}"},
            stdin=subprocess.DEVNULL,
            pass_fds=(to_worker_r, from_worker_w),
        )
        os.close(to_worker_r)
        os.close(from_worker_w)
        loop = asyncio.get_running_loop()
        self.reader = asyncio.StreamReader(limit=2**31)
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(self.reader), os.fdopen(from_worker_r, "rb", 0)
        )
        self.writer, _ = await loop.connect_write_pipe(
            asyncio.BaseProtocol, os.fdopen(to_worker_w, "wb", 0)
        )
        header, body = await self._read_frame()
        if header.get("type") != "ready":
            raise RuntimeError(f"worker {self.index} failed to load the model:\n{header.get('error', header)}")
        logger.info(
            json.dumps({"event": "worker_ready", "worker": self.index, "pid": header["pid"],
                        "load_seconds": round(header["load_seconds"], 3)})
        )
        self.description = json.loads(body)
        return self.description

    async def _read_frame(self) -> tuple[dict[str, Any], bytes]:
        assert self.reader is not None
        try:
            prefix = await self.reader.readexactly(protocol.LENGTHS_SIZE)
            header_len, body_len = protocol.decode_lengths(prefix)
            header = json.loads(await self.reader.readexactly(header_len))
            body = await self.reader.readexactly(body_len) if body_len else b""
        except (asyncio.IncompleteReadError, ConnectionError):
            raise WorkerLost(f"worker {self.index} exited") from None
        return header, body

    async def call(self, job: _Job) -> WorkerResponse:
        self._send(protocol.encode_frame(
            {"id": job.request_id, "endpoint": job.endpoint, "binary_parameter": job.binary_parameter},
            job.body,
        ))
        header, body = await self._read_frame()
        return WorkerResponse(header["status"], body)

    async def call_stream(self, job: _Job) -> WorkerResponse:
        """A streaming request: its chunks into `job.chunks`, as they arrive; the final answer."""
        assert job.chunks is not None
        self._send(protocol.encode_frame(
            {"id": job.request_id, "endpoint": job.endpoint, "binary_parameter": job.binary_parameter},
            job.body,
        ))
        while True:
            header, body = await self._read_frame()
            if not header.get(protocol.CHUNK):
                return WorkerResponse(header["status"], body)
            job.chunks.put_nowait(body)

    def cancel(self, request_id: str) -> None:
        """Tell the worker to stop streaming `request_id` (its client is gone)."""
        if self.writer is not None and not self.writer.is_closing():
            self.writer.write(protocol.encode_frame({protocol.CANCEL: request_id}))

    async def call_batch(self, batch: _Batch) -> list[WorkerResponse]:
        self._send(protocol.encode_frame(
            {"id": [job.request_id for job in batch.jobs], "endpoint": batch.endpoint,
             "binary_parameter": batch.binary_parameter,
             protocol.BATCH_SIZES: [len(job.body) for job in batch.jobs]},
            b"".join(job.body for job in batch.jobs),
        ))
        header, body = await self._read_frame()
        bodies = protocol.split_batch(body, header[protocol.BATCH_SIZES])
        return [WorkerResponse(status, part) for status, part in zip(header[protocol.BATCH_STATUSES], bodies)]

    def _send(self, frame: bytes) -> None:
        if self.writer is None or self.writer.is_closing():
            raise WorkerLost(f"worker {self.index} is gone")
        self.writer.write(frame)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
        self._close()

    async def stop(self, grace: float) -> None:
        """Close the worker's input (it exits after its current job) and reap it."""
        self._close()
        if self.process is None:
            return
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.run_in_executor(None, self.process.wait), grace)
        except asyncio.TimeoutError:
            self.process.kill()
            await loop.run_in_executor(None, self.process.wait)

    def _close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class WorkerPool:
    """Runs `count` workers, feeds them from a bounded queue and replaces the ones that die."""

    def __init__(
        self,
        command: Sequence[str],
        count: int,
        max_queue: int,
        timeout: float,
        env: Optional[dict[str, str]] = None,
        metrics: Any = None,
        batching: bool = True,
        worker_env: Callable[[int], dict[str, str]] = lambda index: {},
    ) -> None:
        self.command = list(command)
        self.count = count
        self.timeout = timeout
        self.env = dict(os.environ if env is None else env)
        self.worker_env = worker_env  # what worker `index` adds to env (its threads, its GPU)
        self.metrics = metrics
        self.queue: asyncio.Queue[Union[_Job, _Batch]] = asyncio.Queue(maxsize=max_queue)
        self.description: Optional[dict[str, Any]] = None
        self.ready_workers = 0
        self.busy_workers = 0
        self._tasks: list[asyncio.Task] = []
        self._workers: list[_Worker] = []
        self._ids = itertools.count()
        self._stopping = False
        self.batching = batching  # off: batchable endpoints are called one request at a time
        self._batchers: dict[tuple[str, Optional[str]], Optional[_Batcher]] = {}

    @property
    def ready(self) -> bool:
        return self.ready_workers > 0 and not self._stopping

    async def start(self) -> None:
        """Start every worker; returns once the first one has loaded the model.

        The others start only then: loading at the same time, they would share the cores and
        the first one would be ready later than it is alone."""
        first_ready: asyncio.Future = asyncio.get_running_loop().create_future()
        self._tasks.append(asyncio.create_task(self._run_worker(0, first_ready)))
        await first_ready
        for index in range(1, self.count):
            self._tasks.append(asyncio.create_task(self._run_worker(index, first_ready)))

    async def submit(
        self, endpoint: str, body: bytes, request_id: str, binary_parameter: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> WorkerResponse:
        """Queue a request; `timeout` can only shorten the pool's limit, never extend it."""
        future = asyncio.get_running_loop().create_future()
        limit = self._limit(timeout)
        job = _Job(endpoint, body, request_id, binary_parameter, future, limit)
        batcher = self._batcher(endpoint, binary_parameter)
        if batcher is not None:
            batcher.add(job)
            return await future
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            raise QueueFull() from None
        return await future

    def _limit(self, timeout: Optional[float]) -> float:
        """A request's time limit: `timeout` can only shorten the pool's, never extend it."""
        return self.timeout if timeout is None else max(0.0, min(timeout, self.timeout))

    def submit_stream(
        self, endpoint: str, body: bytes, request_id: str, binary_parameter: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> Stream:
        """Queue a request to a streaming endpoint; its `timeout` bounds the whole stream."""
        future = asyncio.get_running_loop().create_future()
        limit = self._limit(timeout)
        job = _Job(endpoint, body, request_id, binary_parameter, future, limit, chunks=asyncio.Queue())
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            raise QueueFull() from None
        return Stream(job)

    def _batcher(self, endpoint: str, binary_parameter: Optional[str]) -> Optional[_Batcher]:
        """The batcher of a batchable endpoint (per kind of body), None for the others; decided
        once per endpoint and body kind, not on every request."""
        key = (endpoint, binary_parameter)
        if key in self._batchers:
            return self._batchers[key]
        if not self.batching or self.description is None:
            return None
        spec = self.description["endpoints"].get(endpoint) or {}
        policy = BatchPolicy.from_json(spec.get("batch"))
        batcher = (_Batcher(self, endpoint, binary_parameter, policy)
                   if policy is not None and policy.max_batch_size > 1 else None)
        self._batchers[key] = batcher
        return batcher

    async def _run_worker(self, index: int, first_ready: asyncio.Future) -> None:
        restarts = 0
        while not self._stopping:
            worker = _Worker(index, self.command, {**self.env, **self.worker_env(index)})
            self._workers.append(worker)
            try:
                description = await worker.start()
            except Exception as e:
                self._workers.remove(worker)
                worker.kill()
                if not first_ready.done():
                    first_ready.set_exception(e)
                    return
                logger.error(json.dumps({"event": "worker_start_failed", "worker": index, "error": str(e)}))
                await asyncio.sleep(min(30, 0.5 * 2**restarts))
                restarts += 1
                continue
            restarts = 0
            self.description = self.description or description
            self.ready_workers += 1
            if not first_ready.done():
                first_ready.set_result(None)
            try:
                await self._serve(worker)
            finally:
                self.ready_workers -= 1
            if self._stopping:
                return
            self._workers.remove(worker)
            if self.metrics:
                self.metrics.worker_restarts += 1
            logger.warning(json.dumps({"event": "worker_restart", "worker": index,
                                       "exit_code": worker.process.poll() if worker.process else None}))

    async def _serve(self, worker: _Worker) -> None:
        """Feed jobs to one worker until it dies or the pool stops."""
        while not self._stopping:
            job = await self.queue.get()
            if job.future.done():  # the client went away while it queued
                self.count_abandoned(len(job.jobs) if isinstance(job, _Batch) else 1)
                continue
            self.busy_workers += 1
            try:
                if isinstance(job, _Batch):
                    if self.metrics:
                        self.metrics.batch_calls += 1
                        self.metrics.batched_requests += len(job.jobs)
                    response: Any = await asyncio.wait_for(worker.call_batch(job), job.timeout)
                elif job.chunks is not None:
                    job.worker = worker
                    try:
                        response = await asyncio.wait_for(worker.call_stream(job), job.timeout)
                    finally:
                        job.worker = None
                else:
                    response = await asyncio.wait_for(worker.call(job), job.timeout)
            except asyncio.TimeoutError:
                # The worker is stuck in the model: replace it rather than wait.
                worker.kill()
                if not job.future.done():
                    job.future.set_exception(WorkerTimeout(job.timeout))
                return
            except WorkerLost as e:
                worker.kill()
                if not job.future.done():
                    job.future.set_exception(e)
                return
            finally:
                self.busy_workers -= 1
            if not job.future.done():
                job.future.set_result(response)

    def count_abandoned(self, requests: int) -> None:
        if self.metrics:
            self.metrics.abandoned_requests += requests

    @property
    def in_flight(self) -> int:
        return self.busy_workers

    async def stop(self, grace: float = 30.0) -> None:
        """Let queued and in-flight jobs finish (up to `grace` seconds), then stop the workers."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        for batcher in self._batchers.values():
            if batcher is not None:
                batcher.flush()
        while (self.busy_workers or not self.queue.empty()) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # Closing a worker's input makes it exit on its own; stragglers are killed.
        await asyncio.gather(
            *(w.stop(max(0.5, deadline - loop.time())) for w in self._workers),
            return_exceptions=True,
        )
        self._workers.clear()
