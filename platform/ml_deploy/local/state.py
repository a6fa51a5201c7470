"""The local environment's state directory: live deployments, their history, the route table.

    state.json                  live deployments (backend address, pid or container id, digest)
                                and the digests each model version had, for rollback
    routes.json                 the gateway's route table (ml_contract.route_table)
    gateway/                    the gateway's gateway.pex copy and gateway.json (pid, port)
    releases/<name>-v<version>/<short digest>/
                                what a process backend runs from: a copy of model.pex and
                                server.pex (the package handed to the deploy lives in a Pants
                                sandbox that is deleted afterwards); release.json
    logs/                       one log per release and the gateway's
    run/                        ready files of backends being started
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

from ml_contract.package_layout import GATEWAY_PEX
from ml_contract.route_table import ROUTES_FILE, RouteBackend, RouteTable, host_label
from ml_deploy.config import ConfigError, Environment
from ml_deploy.release import Release, short_digest

PROCESS, CONTAINER = "process", "container"  # how a backend runs: Deployment.kind
HISTORY = 10  # digests remembered per model version, for rollback
RELEASE_RECORD = "release.json"  # in a release copy: the release's settings, for rollback


def release_key(model: str, version: int) -> str:
    return f"{model}-v{version}"


@dataclass(frozen=True)
class Deployment:
    """One live model version."""

    model: str
    version: int
    digest: str
    backend: str  # 127.0.0.1:port
    kind: str  # PROCESS or CONTAINER
    release_dir: str
    log: str = ""
    started: str = ""
    pid: Optional[int] = None
    pid_start: Optional[int] = None  # the process's start time: a reused pid is not ours
    container: Optional[str] = None
    engine: Optional[str] = None  # the engine's API URL, to stop the container with

    @property
    def key(self) -> str:
        return release_key(self.model, self.version)

    @property
    def runner(self) -> str:
        return f"pid {self.pid}" if self.pid else f"container {(self.container or '')[:12]}"

    def describe(self) -> str:
        return f"{self.model} v{self.version} {short_digest(self.digest)} on {self.backend} ({self.kind}, {self.runner})"


@dataclass
class State:
    generation: int = 0
    deployments: Dict[str, Deployment] = field(default_factory=dict)
    history: Dict[str, List[str]] = field(default_factory=dict)  # release key -> digests, oldest first

    def to_json(self) -> Dict[str, Any]:
        return {"generation": self.generation,
                "deployments": {k: dataclasses.asdict(d) for k, d in sorted(self.deployments.items())},
                "history": self.history}

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "State":
        names = {f.name for f in dataclasses.fields(Deployment)}
        deployments = {k: Deployment(**{n: v for n, v in d.items() if n in names})
                       for k, d in (data.get("deployments") or {}).items()}
        return cls(int(data.get("generation") or 0), deployments, dict(data.get("history") or {}))

    def routes(self, domain: str) -> RouteTable:
        models: Dict[str, Dict[int, RouteBackend]] = {}
        for d in self.deployments.values():
            models.setdefault(host_label(d.model), {})[d.version] = RouteBackend(d.backend, d.digest)
        return RouteTable(self.generation, domain, models)


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def write_json(path: Path, data: Any) -> None:
    """Atomically: readers (the gateway, a concurrent deploy) see the old file or the new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def tail(path: Path, size: int = 3000) -> str:
    """The last whole lines of `path`, about `size` bytes."""
    try:
        with path.open("rb") as f:
            start = max(0, path.stat().st_size - size)
            f.seek(start)
            data = f.read()
    except OSError:
        return ""
    if start:
        data = data.partition(b"\n")[2]
    return data.decode(errors="replace")


class Site:
    """One environment's state directory, its gateway and its route table."""

    def __init__(self, environment: Environment) -> None:
        self.environment = environment
        self.root = Path(os.path.abspath(environment.local_state_dir()))
        self.state_file = self.root / "state.json"
        self.routes_file = self.root / ROUTES_FILE
        self.gateway_dir = self.root / "gateway"
        self.gateway_file = self.gateway_dir / "gateway.json"
        self.gateway_pex = self.gateway_dir / GATEWAY_PEX  # the copy the gateway runs from
        self.releases = self.root / "releases"
        self.logs = self.root / "logs"
        self.run_dir = self.root / "run"

    @property
    def port(self) -> int:
        return self.environment.gateway_port

    def url(self, model: str, version: int) -> str:
        return f"http://{self.hostname(model)}:{self.port}/v{version}/"

    def hostname(self, model: str) -> str:
        return f"{host_label(model)}.ml.{self.environment.domain}"

    def release_dir(self, model: str, version: int, digest: str) -> Path:
        return self.releases / release_key(model, version) / short_digest(digest)

    def copy_of(self, release: Release) -> Path:
        """Where a process backend runs `release` from."""
        return self.release_dir(release.name, release.version, release.digest)

    def read(self) -> State:
        try:
            return State.from_json(json.loads(self.state_file.read_text()))
        except FileNotFoundError:
            return State()
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{self.state_file} is damaged ({e}); stop what runs with "
                              f"`python -m ml_deploy stop --env {self.environment.name}` and remove it") from None

    def write(self, state: State) -> None:
        """state.json, then the route table the gateway reads (both by rename)."""
        self.root.mkdir(parents=True, exist_ok=True)
        write_json(self.state_file, state.to_json())
        write_json(self.routes_file, state.routes(self.environment.domain).to_json())

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Serialises state changes between deploys running at the same time."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def update(self, change: Callable[[State], None]) -> State:
        """Apply `change` to the state under the lock, as a new route generation."""
        with self.locked():
            state = self.read()
            change(state)
            state.generation += 1
            self.write(state)
            return state
