"""Test fixtures for the deploy tools: a moto server on 127.0.0.1 standing in for AWS.

Only AWS itself is emulated (no AWS account can be used here); everything else the deploy
tests touch is real: the registry, podman, HTTP.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from ml_image.testing import free_port

# Built by Pants from the `moto` resolve (tests/aws:moto-server) and put in the test sandbox by
# runtime_package_dependencies.
MOTO_SERVER_PEX = Path("tests/aws/moto-server.pex")
REGION = "eu-west-1"
ACCOUNT = "123456789012"  # moto's default account
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_REGION": REGION,
    "AWS_DEFAULT_REGION": REGION,
}


@dataclass
class MotoServer:
    process: subprocess.Popen
    endpoint: str
    log: Path

    def reset(self) -> None:
        """Forget every resource (moto's reset API), so tests start from an empty account."""
        req = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST", data=b"")
        urllib.request.urlopen(req, timeout=10).close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_moto(workdir: Path, pex: Optional[Path] = None, timeout: float = 60) -> MotoServer:
    pex = pex or MOTO_SERVER_PEX
    if not pex.exists():
        raise RuntimeError(f"{pex} is missing: the test needs runtime_package_dependencies="
                           f"['//tests/aws:moto-server'] in its BUILD target")
    port = free_port()
    log = workdir / "moto.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(FAKE_CREDENTIALS)
    process = subprocess.Popen(
        [str(pex), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto server exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).close()
            return MotoServer(process, endpoint, log)
        except OSError:
            time.sleep(0.1)
    process.kill()
    process.wait()
    raise RuntimeError(f"moto server did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


def aws_environ(moto: MotoServer) -> dict:
    """Environment variables pointing boto3 (and the deploy tools) at `moto`."""
    return {**FAKE_CREDENTIALS, "AWS_ENDPOINT_URL": moto.endpoint}


def moto_server(workdir: Path) -> Iterator[MotoServer]:
    """For a pytest fixture: `yield from moto_server(tmp_path)`. Sets the AWS environment of
    this process for the duration."""
    server = start_moto(workdir)
    saved = {k: os.environ.get(k) for k in (*FAKE_CREDENTIALS, "AWS_ENDPOINT_URL")}
    os.environ.update(aws_environ(server))
    try:
        yield server
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def record_api_calls(session) -> list:
    """Every AWS API call made through clients of boto3 `session` from now on, as
    "service.Operation" (e.g. "lambda.UpdateAlias"), in order. For asserting that a dry run
    makes only read calls."""
    calls: list = []

    def record(event_name: str, **_: object) -> None:
        _, service, operation = event_name.split(".", 2)
        calls.append(f"{service}.{operation}")

    session.events.register("before-call", record)
    return calls


READ_ONLY_PREFIXES = ("Get", "List", "Describe")


def mutating(calls: list) -> list:
    return [c for c in calls if not c.split(".", 1)[1].startswith(READ_ONLY_PREFIXES)]
