"""A packaged model served for real: its server process on 127.0.0.1, workers from the model's
own environment, and a plain HTTP client for it."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Optional


# Shorter than the server's default: a request its client gave up on (the fuzzer's timeout)
# may still be running in a worker when the test stops the server.
SHUTDOWN_GRACE = 10.0


class ServedModel:
    """`<package>/model.pex serve` on a free port; `stop()` (SIGTERM) ends it."""

    def __init__(self, package: Path, tmp: Path, *args: str, start_timeout: float = 60,
                 env: Optional[dict[str, str]] = None) -> None:
        self.ready_file = tmp / "url"
        self.stdout_path, self.stderr_path = tmp / "stdout.log", tmp / "stderr.log"
        self.process = subprocess.Popen(
            [str(package / "model.pex" / "__main__.py"), "serve", "--port", "0",
             "--ready-file", str(self.ready_file), "--shutdown-grace", str(SHUTDOWN_GRACE), *args],
            stdout=self.stdout_path.open("wb"),
            stderr=self.stderr_path.open("wb"),
            env=None if env is None else {**os.environ, **env},
        )
        deadline = time.monotonic() + start_timeout
        while not self.ready_file.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"{package} did not start serving in {start_timeout:g} s:\n"
                                     f"{self.stderr_path.read_text()}")
            time.sleep(0.05)
        self.url = self.ready_file.read_text()
        self.host, port = self.url.removeprefix("http://").split(":")
        self.port = int(port)

    def request(self, method: str, path: str, body: Any = None, headers: Optional[dict] = None,
                raw: Optional[bytes] = None, timeout: float = 30) -> tuple[int, dict, Any]:
        """One request on a new connection: status, lower-cased headers, and the body (parsed
        when it is JSON)."""
        connection = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        headers = dict(headers or {})
        if raw is None and body is not None:
            raw = json.dumps(body).encode()
            headers.setdefault("content-type", "application/json")
        connection.request(method, path, body=raw, headers=headers)
        response = connection.getresponse()
        data = response.read()
        connection.close()
        content_type = response.getheader("content-type", "")
        payload = json.loads(data) if data and content_type.startswith("application/json") else data
        return response.status, {k.lower(): v for k, v in response.getheaders()}, payload

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=SHUTDOWN_GRACE + 15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"server ignored SIGTERM:\n{self.stderr_path.read_text()[-4000:]}")
        return self.process.returncode
