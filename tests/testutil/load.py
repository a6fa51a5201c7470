"""Steady HTTP load while something changes underneath (a redeploy that must drop no request),
and fixtures that must tear down when CI cancels the job."""

from __future__ import annotations

import contextlib
import http.client
import signal
import threading
import time
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple


@dataclass
class Load:
    """What the clients of `steady_load` saw: every answer in the order they came (status,
    headers with lower-case names, body) and every failure (an answer other than 200, or a
    request that got no answer: a dropped request, whatever the cause)."""

    answers: List[Tuple[int, Dict[str, str], bytes]]
    failures: List[str]
    answered_at: List[float]  # time.perf_counter() of each answer, in the order of `answers`


@contextlib.contextmanager
def steady_load(port: int, path: str, body: bytes, headers: Dict[str, str], *, clients: int = 6,
                settle: float = 0.5, timeout: float = 30, pause: float = 0.0) -> Iterator[Load]:
    """`clients` threads POST `body` to `path` on 127.0.0.1:`port` back to back (or `pause`
    seconds apart, to leave the CPUs to what is measured) for as long as the block runs: half
    keep one connection alive, half open a new one for each request. They start `settle` seconds
    before the block's body runs and stop `settle` seconds after it."""
    load = Load([], [], [])
    stop = threading.Event()

    def client(keep_alive: bool) -> None:
        connection: Optional[http.client.HTTPConnection] = None
        while not stop.is_set():
            try:
                connection = connection or http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
                connection.request("POST", path, body=body, headers=headers)
                response = connection.getresponse()
                answer = response.read()
                load.answers.append((response.status, {k.lower(): v for k, v in response.getheaders()}, answer))
                load.answered_at.append(time.perf_counter())
                if response.status != 200:
                    load.failures.append(f"{response.status}: {answer[:200]!r}")
            except Exception as e:  # any error is a dropped request
                load.failures.append(repr(e))
                connection = None
            if connection is not None and (not keep_alive or stop.is_set()):
                connection.close()
                connection = None
            if pause:
                time.sleep(pause)

    threads = [threading.Thread(target=client, args=(i % 2 == 0,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(settle)
        yield load
        time.sleep(settle)
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def teardown_on_sigterm() -> None:
    """Make SIGTERM a KeyboardInterrupt, on which pytest still tears fixtures down.

    By default SIGTERM (a cancelled CI job) kills pytest before teardown, and the gateways and
    servers a local deploy detached would outlive it. Fixtures that deploy locally call this
    first. It cannot help against SIGKILL, which Pants sends soon after a test's timeout."""
    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}: tearing down")

    signal.signal(signal.SIGTERM, interrupt)
