"""Runs a model image on this machine through a Docker-API engine (Docker, or podman's
Docker-compatible socket), with the `docker` SDK.

    python -m ml_image.engine run dist/models.iris/iris/image [--port 8080]

loads the image, starts it (host network, the server on 127.0.0.1:<port>), waits until it is
ready, prints its URL, and on Ctrl-C or SIGTERM stops and removes the container.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Tuple

# Where engines listen when DOCKER_HOST is not set, in the order tried.
DEFAULT_SOCKETS = (
    "/var/run/docker.sock",
    f"{os.environ.get('XDG_RUNTIME_DIR', '/run/user/0')}/podman/podman.sock",
    "/run/podman/podman.sock",
)


class EngineUnavailable(RuntimeError):
    pass


def connect(docker_host: Optional[str] = None):
    """A docker SDK client for the first engine that answers a ping."""
    return connect_with_url(docker_host)[0]


def connect_with_url(docker_host: Optional[str] = None) -> Tuple[Any, str]:
    """(docker SDK client, its engine URL) for the first engine that answers a ping: `docker_host`,
    else DOCKER_HOST, else the default sockets that exist. The URL lets a later process reach the
    same engine again."""
    import docker  # only here: the rest of ml_image needs nothing beyond the standard library

    docker_host = docker_host or os.environ.get("DOCKER_HOST")
    candidates = [docker_host] if docker_host else [f"unix://{path}" for path in DEFAULT_SOCKETS if os.path.exists(path)]
    errors = []
    for url in candidates:
        try:
            client = docker.DockerClient(base_url=url, timeout=30)
            client.ping()
            return client, url
        except Exception as e:  # the SDK raises several unrelated types for "not there"
            errors.append(f"{url}: {e}")
    tried = "; ".join(errors) or f"no socket at {', '.join(DEFAULT_SOCKETS)} and DOCKER_HOST is not set"
    raise EngineUnavailable(
        "No Docker-API engine is reachable to run the image (" + tried + "). Start Docker, or "
        "podman's socket: `podman system service --time=0 unix:///run/podman/podman.sock &` and "
        "`export DOCKER_HOST=unix:///run/podman/podman.sock`."
    )


@dataclass
class RunningModel:
    container: object
    url: str

    def stop(self, timeout: int = 30) -> int:
        """SIGTERM (the server drains), then remove; returns the container's exit code."""
        self.container.stop(timeout=timeout)
        code = self.container.wait(timeout=timeout + 10)["StatusCode"]
        self.container.remove(force=True)
        return code


def load(client, layout: Path) -> str:
    """Load the image of an OCI layout (a package's image/) into the engine, streamed to it as a
    docker archive made on the fly (no copy of the image on disk); returns its tag."""
    from ml_image.model_image import write_docker_archive

    read_end, write_end = os.pipe()
    failure: list = []

    def produce() -> None:
        try:
            with os.fdopen(write_end, "wb") as sink:
                write_docker_archive(layout, sink)
        except BaseException as e:  # noqa: B902 - reported by the loading thread
            failure.append(e)

    producer = threading.Thread(target=produce, name="docker-archive", daemon=True)
    producer.start()
    try:
        with os.fdopen(read_end, "rb") as source:
            # In 1 MiB chunks (HTTP chunked encoding): a file object would be sent line by line.
            (image,) = client.images.load(iter(lambda: source.read(1 << 20), b""))
    finally:
        producer.join()
    if failure:
        raise failure[0]
    return image.tags[0] if image.tags else image.id


def wait_for_200(url: str, timeout: float, still_running: Callable[[], bool] = lambda: True,
                 interval: float = 0.01) -> bool:
    """Poll `url` until it answers 200 (True), `still_running()` turns False or `timeout`
    seconds pass (False). How every caller here waits for a server to be ready."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and still_running():
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(interval)
    return False


def run(client, image: str, port: int, env: Optional[dict] = None, ready_timeout: float = 120) -> RunningModel:
    container = client.containers.run(
        image,
        detach=True,
        # Host networking keeps the server on 127.0.0.1 (no bridge network, no private addresses).
        network_mode="host",
        environment={"ML_PORT": str(port), "ML_HOST": "127.0.0.1", **(env or {})},
    )
    model = RunningModel(container, f"http://127.0.0.1:{port}")

    def still_running() -> bool:
        container.reload()
        return container.status not in ("exited", "dead")

    if wait_for_200(f"{model.url}/v2/health/ready", ready_timeout, still_running, interval=0.05):
        return model
    logs = container.logs().decode(errors="replace")[-3000:]
    model.stop()
    raise RuntimeError(f"the model was not ready within {ready_timeout:g} s:\n{logs}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ml_image.engine", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="Load and run a model image until interrupted.")
    p.add_argument("layout", type=Path, help="The model's image, an OCI layout (dist/models.<name>/<name>/image).")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args(argv)
    try:
        client = connect()
    except EngineUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    image = load(client, args.layout)
    model = run(client, image, args.port, dict(e.split("=", 1) for e in args.env))
    print(json.dumps({"event": "running", "image": image, "url": model.url}), flush=True)
    stopping = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.append(True))
    while not stopping:
        time.sleep(0.2)
    code = model.stop()
    print(json.dumps({"event": "stopped", "exit_code": code}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
