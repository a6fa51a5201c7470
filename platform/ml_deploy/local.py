"""`local` compute: model versions run on this machine behind one gateway that routes by host
name, `http://<model>.ml.<domain>:<gateway_port>/v<version>/...`.

Each deployed model version is one backend: the model's container run through a Docker-API
engine (`engine: docker`, or `auto` when one answers) with the server on a free port of
127.0.0.1, or the packaged server run as a process (`engine: process`, or `auto` when no engine
answers). The gateway is `ml_serving.gateway` run from a copy of the packaged server.pex, a
detached process started by the first deploy.

Everything is kept in the environment's state directory (`environment.local_state_dir()`):

    state.json                  live deployments (backend address, pid or container id, digest)
                                and the digests each model version had, for rollback
    routes.json                 the gateway's route table, with a generation number
    gateway/                    the gateway's server.pex copy and gateway.json (pid, port)
    releases/<name>-v<version>/<short digest>/
                                what a process backend runs from: a copy of model.pex and
                                server.pex (the package handed to the deploy lives in a Pants
                                sandbox that is deleted afterwards); release.json
    logs/                       one log per release and the gateway's

A redeploy starts the new backend beside the old one, waits until it is ready, switches the
route, checks that the gateway loaded the new table and that the new version answers through it,
waits until the gateway has no request in flight to the old backend, and only then SIGTERMs it
(the server drains and exits). A step that fails puts the previous route back and stops what it
started, so the previous version keeps serving.

Every process started here carries ML_LOCAL_STATE=<state dir> in its environment, so that
`stop` also finds processes a crashed deploy left behind; containers carry the label ml.state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from ml_contract.package_layout import IMAGE_LAYOUT, IMAGE_TAR, MODEL_PEX, READY_PATH, SERVER_PEX
from ml_deploy.config import ConfigError, Environment
from ml_deploy.plan import CREATE, DELETE, REPLACE, UNCHANGED, UPDATE, Plan
from ml_deploy.release import Release, short_digest
from ml_image.layers import file_digest

PROCESS, CONTAINER = "process", "container"
READY_TIMEOUT = 180.0  # a model slower than this to load fails its deploy
GATEWAY_TIMEOUT = 60.0  # its first start unpacks server.pex's environment
RELOAD_TIMEOUT = 10.0
STOP_TIMEOUT = 40.0  # the server's shutdown grace (30 s, ML_SHUTDOWN_GRACE) and a margin
KEEP_RELEASES = 2  # copies kept per model version: the live one and the one before (rollback)
HISTORY = 10
STATE_MARK = "ML_LOCAL_STATE"
RELEASE_MARK = "ML_LOCAL_RELEASE"
GATEWAY_MODULE = "ml_serving.gateway"


class BackendFailed(RuntimeError):
    pass


# ----------------------------------------------------------------------------------------------
# State


@dataclass
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

    def describe(self) -> str:
        runner = f"pid {self.pid}" if self.kind == PROCESS else f"container {(self.container or '')[:12]}"
        return f"{self.model} v{self.version} {short_digest(self.digest)} on {self.backend} ({self.kind}, {runner})"


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


def release_key(model: str, version: int) -> str:
    return f"{model}-v{version}"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _write_json(path: Path, data: Any) -> None:
    """Atomically: readers (the gateway, a concurrent deploy) see the old file or the new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _tail(path: Path, size: int = 3000) -> str:
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
        self.routes_file = self.root / "routes.json"
        self.gateway_dir = self.root / "gateway"
        self.gateway_file = self.gateway_dir / "gateway.json"
        self.releases = self.root / "releases"
        self.logs = self.root / "logs"
        self.run_dir = self.root / "run"

    @property
    def port(self) -> int:
        return self.environment.gateway_port

    def url(self, model: str, version: int) -> str:
        return f"http://{self.hostname(model)}:{self.port}/v{version}/"

    def hostname(self, model: str) -> str:
        return f"{model.replace('_', '-')}.ml.{self.environment.domain}"

    def release_dir(self, model: str, version: int, digest: str) -> Path:
        return self.releases / release_key(model, version) / short_digest(digest)

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
        _write_json(self.state_file, state.to_json())
        models: Dict[str, Dict[str, Dict[str, str]]] = {}
        for d in state.deployments.values():
            routes = models.setdefault(d.model.replace("_", "-"), {})
            routes[str(d.version)] = {"backend": d.backend, "digest": d.digest}
        _write_json(self.routes_file, {"generation": state.generation, "domain": self.environment.domain,
                                       "models": models})

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


# ----------------------------------------------------------------------------------------------
# Processes


def _proc_start(pid: Optional[int]) -> Optional[int]:
    """When `pid` started (clock ticks since boot), or None if it is not running (a zombie is
    not). Compared with the recorded value, it tells our process from a reused pid."""
    if not pid:
        return None
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our own child that exited
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


def _alive(pid: Optional[int], pid_start: Optional[int]) -> bool:
    return pid is not None and _proc_start(pid) == pid_start


def _stop_process(pid: Optional[int], pid_start: Optional[int], timeout: float = STOP_TIMEOUT) -> str:
    """SIGTERM (the server finishes what is in flight and exits), SIGKILL to its process group
    (its workers too) if it has not exited within `timeout` seconds."""
    if not _alive(pid, pid_start):
        return "had already exited"
    assert pid is not None
    started = time.monotonic()
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    while time.monotonic() - started < timeout:
        if not _alive(pid, pid_start):
            return f"drained and exited in {time.monotonic() - started:.1f} s"
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)  # started in its own session: pgid == pid
    return f"killed: it had not exited {timeout:g} s after SIGTERM"


def _stop_group(group: int, timeout: float = STOP_TIMEOUT) -> str:
    """A stray process group (its leader may be gone): SIGTERM, then SIGKILL."""
    def members() -> bool:
        try:
            os.killpg(group, 0)
            return any(_proc_start(pid) is not None for pid in _group_members(group))
        except ProcessLookupError:
            return False

    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while members():
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
            return "killed"
        time.sleep(0.05)
    return "exited on SIGTERM"


def _group_members(group: int) -> List[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                if int((entry / "stat").read_text().rpartition(")")[2].split()[2]) == group:
                    pids.append(int(entry.name))
    return pids


def _child_env(site: Site, key: str, extra: Dict[str, str]) -> Dict[str, str]:
    # The deploy tool itself runs from a PEX: its PEX_* settings (a sandbox-relative PEX_ROOT,
    # the tool's own entry point) must not leak into the packaged PEXes started here.
    env = {k: v for k, v in os.environ.items() if not k.lstrip("_").startswith("PEX")}
    env.update(extra)
    env[STATE_MARK] = str(site.root)
    env[RELEASE_MARK] = key
    return env


def _marked_processes(site: Site) -> Dict[int, str]:
    """pid -> release key of every process started from this state directory (and their
    children, which inherit the mark)."""
    found: Dict[int, str] = {}
    mark = f"{STATE_MARK}={site.root}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if mark in environ:
            prefix = RELEASE_MARK.encode() + b"="
            found[int(entry.name)] = next((e[len(prefix):].decode() for e in environ if e.startswith(prefix)), "")
    return found


def _strays(site: Site, known: set, model: Optional[str] = None) -> Dict[int, str]:
    """Process groups started from this state directory that no deployment or gateway owns
    (left by a deploy that was killed half-way): group leader pid -> release key."""
    strays: Dict[int, str] = {}
    for pid, key in _marked_processes(site).items():
        if pid == os.getpid():
            continue
        try:
            group = os.getpgid(pid)
        except OSError:
            continue
        if group in known or (model is not None and not key.startswith(f"{model}-v")):
            continue
        strays.setdefault(group, key)
    return strays


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------------------------
# HTTP to the gateway and the backends


def _get(port: int, path: str, host: Optional[str] = None, timeout: float = 2.0,
         address: str = "127.0.0.1") -> Tuple[int, Dict[str, str], bytes]:
    connection = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        connection.request("GET", path, headers={"host": host} if host else {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def _ready(backend: str) -> bool:
    host, _, port = backend.rpartition(":")
    try:
        return _get(int(port), READY_PATH, address=host)[0] == 200
    except (OSError, http.client.HTTPException):
        return False


def _admin(port: int) -> Optional[Dict[str, Any]]:
    """The gateway's /-/routes on `port`; None if nothing listens there, {} if something that is
    not a gateway does."""
    try:
        status, _, body = _get(port, "/-/routes")
    except ConnectionError:  # refused: nothing listens; reset: what listened is exiting
        return None
    except (OSError, http.client.HTTPException):
        return {}
    try:
        data = json.loads(body)
    except ValueError:
        return {}
    return data if status == 200 and isinstance(data, dict) and "generation" in data else {}


@dataclass
class Gateway:
    pid: Optional[int]
    pid_start: Optional[int]
    port: Optional[int]  # where it was started
    build: Optional[str]  # the digest of the server.pex it runs from
    alive: bool  # its process runs
    answering: Optional[Dict[str, Any]]  # its /-/routes, if it answers on the environment's port

    @property
    def running(self) -> bool:
        return self.alive and bool(self.answering) and self.answering.get("pid") == self.pid

    @property
    def generation(self) -> Optional[int]:
        return self.answering.get("generation") if self.running and self.answering else None


def gateway_state(site: Site) -> Gateway:
    try:
        info = json.loads(site.gateway_file.read_text())
    except (OSError, ValueError):
        info = {}
    pid, pid_start = info.get("pid"), info.get("pid_start")
    alive = _alive(pid, pid_start)
    answering = _admin(site.port)
    return Gateway(pid, pid_start, info.get("port"), info.get("server_pex"), alive, answering)


def _check_port_is_ours(site: Site, gateway: Gateway) -> None:
    if gateway.answering is not None and not gateway.running:
        raise ConfigError(
            f"127.0.0.1:{site.port} is taken by a program that is not the gateway of environment "
            f"{site.environment.name!r} (state in {site.root}): another program, or another "
            f"environment's gateway. Set another gateway_port for {site.environment.name!r} in the "
            f"deploy environments file, or stop what listens there.")


def _reload(site: Site, generation: int) -> None:
    """Make the gateway load the route table of `generation` (SIGHUP; it also watches the
    file) and wait until it says it did."""
    gateway = gateway_state(site)
    if not gateway.running:
        raise RuntimeError(f"the gateway (127.0.0.1:{site.port}) is not running; deploy again to start it")
    assert gateway.pid is not None
    os.kill(gateway.pid, signal.SIGHUP)
    deadline = time.monotonic() + RELOAD_TIMEOUT
    while True:
        data = _admin(site.port) or {}
        if data.get("generation", -1) >= generation:
            return
        if data.get("reload_error"):
            raise RuntimeError(f"the gateway rejected route table generation {generation}: {data['reload_error']}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the gateway did not load route table generation {generation} within "
                               f"{RELOAD_TIMEOUT:g} s (it serves {data.get('generation')})")
        time.sleep(0.01)


def _wait_idle(site: Site, backend: str, timeout: float) -> bool:
    """Wait until the gateway has no request in flight to `backend` (True), or `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = _admin(site.port)
        if not data or not data.get("in_flight", {}).get(backend):
            return True
        time.sleep(0.02)
    return False


# ----------------------------------------------------------------------------------------------
# Container engine


def connect_engine(environment: Environment) -> Optional[Tuple[Any, str]]:
    """(docker client, engine URL) when models run as containers, None when as processes."""
    if environment.engine == PROCESS:
        return None
    from ml_image import engine

    try:
        return engine.connect_with_url()
    except engine.EngineUnavailable as e:
        if environment.engine == "docker":
            raise ConfigError(f"environment {environment.name!r} has engine: docker, but {e} "
                              f"(or set engine: process, or auto, to run the packaged server instead)") from None
        return None


def _engine_client(url: str) -> Any:
    from ml_image import engine

    return engine.connect(url)


def _container(deployment: Deployment) -> Any:
    """The deployment's container, or None if it is gone."""
    from docker.errors import NotFound

    try:
        return _engine_client(deployment.engine or "").containers.get(deployment.container)
    except NotFound:
        return None


def _image_id(release: Release) -> str:
    """The image's config digest: what an engine calls the image once loaded."""
    from ml_image.registry import read_layout

    layout = release.package_dir / IMAGE_LAYOUT
    if layout.is_dir():
        return read_layout(layout).config.digest
    record = release.package_dir / "release.json"  # a kept release, for rollback
    image = json.loads(record.read_text()).get("image") if record.exists() else None
    if not image:
        raise ConfigError(f"{release.package_dir} has no image layout ({IMAGE_LAYOUT}/) to run as a container")
    return image


def _has_image(client: Any, image_id: str) -> bool:
    from docker.errors import ImageNotFound

    try:
        client.images.get(image_id)
        return True
    except ImageNotFound:
        return False


# ----------------------------------------------------------------------------------------------
# Backends


def alive(deployment: Deployment) -> bool:
    if deployment.kind == PROCESS:
        return _alive(deployment.pid, deployment.pid_start)
    try:
        container = _container(deployment)
    except Exception:  # the engine is gone: so is what it ran, as far as we can tell
        return False
    return container is not None and container.status == "running"


def healthy(deployment: Deployment) -> bool:
    return alive(deployment) and _ready(deployment.backend)


def stop_backend(deployment: Deployment) -> str:
    if deployment.kind == PROCESS:
        return _stop_process(deployment.pid, deployment.pid_start)
    container = _container(deployment)
    if container is None:
        return "had already been removed"
    started = time.monotonic()
    container.stop(timeout=int(STOP_TIMEOUT - 5))  # SIGTERM: drains; then SIGKILL
    container.remove(force=True)
    return f"drained, exited and was removed in {time.monotonic() - started:.1f} s"


def _release_record(release: Release, kind: str, image: Optional[str]) -> Dict[str, Any]:
    fields = ("name", "version", "compute", "digest", "address", "cpu", "memory", "gpu", "timeout",
              "description")
    return {**{f: getattr(release, f) for f in fields}, "env": dict(release.env), "kind": kind, "image": image}


def _release_from_record(record: Dict[str, Any], package_dir: Path) -> Release:
    names = {f.name for f in dataclasses.fields(Release)} - {"package_dir"}
    return Release(package_dir=package_dir, **{k: v for k, v in record.items() if k in names})


class Rollout:
    """The steps of one deploy, sharing what earlier steps produced."""

    def __init__(self, site: Site, release: Release, kind: str, engine: Optional[Tuple[Any, str]],
                 plan: Plan) -> None:
        self.site, self.release, self.kind, self.engine, self.plan = site, release, kind, engine, plan
        self.key = release_key(release.name, release.version)
        self.release_dir = site.release_dir(release.name, release.version, release.digest)
        self.image: Optional[str] = None
        self.new: Optional[Deployment] = None
        self.replaced: Optional[Deployment] = None

    @property
    def tag(self) -> str:
        return f"{self.key}-{self.release.short_digest}"

    # -- gateway

    def start_gateway(self) -> str:
        site = self.site
        with site.locked():
            gateway = gateway_state(site)
            if gateway.running and gateway.port == site.port:
                return f"another deploy started it (pid {gateway.pid})"
            if gateway.alive:
                stop_gateway(site)
            if not site.routes_file.exists():
                site.write(site.read())
            return start_gateway(site, self.release.package_dir / SERVER_PEX)

    # -- release files

    def copy_files(self) -> str:
        target = self.release_dir
        if (target / ".complete").exists():
            return "another deploy copied them"
        started = time.monotonic()
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        shutil.copytree(self.release.package_dir / MODEL_PEX, tmp / MODEL_PEX, symlinks=True)
        shutil.copy2(self.release.package_dir / SERVER_PEX, tmp / SERVER_PEX)
        _write_json(tmp / "release.json", _release_record(self.release, PROCESS, None))
        (tmp / ".complete").write_text("")
        shutil.rmtree(target, ignore_errors=True)  # an incomplete copy of an interrupted deploy
        os.rename(tmp, target)
        size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
        return f"{size / 2**20:.0f} MiB in {time.monotonic() - started:.1f} s"

    def load_image(self) -> str:
        from ml_image import engine

        assert self.engine is not None
        client, _ = self.engine
        started = time.monotonic()
        engine.load(client, self.release.package_dir / IMAGE_TAR)
        if not _has_image(client, self.image or ""):
            raise RuntimeError(f"the engine loaded {self.release.package_dir / 'image.tar'} but has no image "
                               f"{self.image}: is image.tar the package's image?")
        return f"loaded in {time.monotonic() - started:.1f} s"

    # -- backend

    def start_backend(self) -> str:
        site, release = self.site, self.release
        for path in (site.logs, site.run_dir, self.release_dir):
            path.mkdir(parents=True, exist_ok=True)
        record = self.release_dir / "release.json"
        if not record.exists():
            _write_json(record, _release_record(release, self.kind, self.image))
        started = time.monotonic()
        if self.kind == PROCESS:
            self.new = self._start_process()
        else:
            self.new = self._start_container()
        return f"ready on {self.new.backend} in {time.monotonic() - started:.1f} s"

    def _deployment(self, backend: str, **runner: Any) -> Deployment:
        return Deployment(model=self.release.name, version=self.release.version, digest=self.release.digest,
                          backend=backend, kind=self.kind, started=_now(),
                          release_dir=str(self.release_dir.relative_to(self.site.root)), **runner)

    def _start_process(self) -> Deployment:
        site, release = self.site, self.release
        ready_file = site.run_dir / f"{self.tag}-{os.getpid()}-{time.monotonic_ns()}.url"
        log = site.logs / f"{self.tag}.log"
        with log.open("ab") as out:
            out.write(f"--- {_now()} deploy of {release.name} v{release.version} {release.digest}\n".encode())
            out.flush()
            process = subprocess.Popen(
                [str(self.release_dir / MODEL_PEX / "__main__.py"), "serve",
                 "--host", "127.0.0.1", "--port", "0", "--ready-file", str(ready_file)],
                cwd=self.release_dir, env=_child_env(site, self.key, dict(release.env)),
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives the deploy tool; stopped by pid
            )
        pid_start = _proc_start(process.pid)

        def fail(why: str) -> BackendFailed:
            _stop_process(process.pid, pid_start, timeout=10)
            with contextlib.suppress(OSError):
                ready_file.unlink()
            return BackendFailed(f"{release.name} v{release.version} {release.short_digest} {why}; "
                                 f"the end of its log ({log}):\n{_tail(log)}")

        deadline = time.monotonic() + READY_TIMEOUT
        while not ready_file.exists():
            if process.poll() is not None:
                raise fail(f"exited with code {process.returncode} before it was ready")
            if time.monotonic() > deadline:
                raise fail(f"was not ready within {READY_TIMEOUT:g} s")
            time.sleep(0.02)
        backend = ready_file.read_text().strip().removeprefix("http://")
        ready_file.unlink()
        from ml_image.engine import wait_for_200

        if not wait_for_200(f"http://{backend}{READY_PATH}", max(1.0, deadline - time.monotonic()),
                            lambda: process.poll() is None):
            raise fail(f"listens on {backend} but {READY_PATH} never answered 200")
        return self._deployment(backend, pid=process.pid, pid_start=pid_start, log=str(log.relative_to(site.root)))

    def _start_container(self) -> Deployment:
        from ml_image.engine import wait_for_200

        assert self.engine is not None
        client, url = self.engine
        release, site = self.release, self.site
        port = _free_port()
        name = re.sub(r"[^a-zA-Z0-9_.-]", "-", f"ml-{site.environment.name}-{self.tag}-{port}")
        container = client.containers.run(
            self.image, detach=True, name=name,
            # Host networking keeps the server on 127.0.0.1 (no bridge network, no private addresses).
            network_mode="host",
            environment={**release.env, "ML_PORT": str(port), "ML_HOST": "127.0.0.1"},
            labels={**release.labels(), "ml.state": str(site.root), "ml.environment": site.environment.name},
        )
        deployment = self._deployment(f"127.0.0.1:{port}", container=container.id, engine=url)

        def running() -> bool:
            container.reload()
            return container.status not in ("exited", "dead")

        if wait_for_200(f"http://127.0.0.1:{port}{READY_PATH}", READY_TIMEOUT, running, interval=0.05):
            return deployment
        logs = container.logs().decode(errors="replace")[-3000:]
        container.remove(force=True)
        raise BackendFailed(f"{release.name} v{release.version} {release.short_digest} (container {name}) was not "
                            f"ready within {READY_TIMEOUT:g} s or exited; its log:\n{logs}")

    # -- route

    def switch(self) -> str:
        new = self.new
        assert new is not None, "the backend step runs first"
        previous: List[Optional[Deployment]] = [None]

        def put_new(state: State) -> None:
            previous[0] = state.deployments.get(self.key)
            state.deployments[self.key] = new
            history = state.history.setdefault(self.key, [])
            if not history or history[-1] != new.digest:
                history.append(new.digest)
            del history[:-HISTORY]

        generation = self.site.update(put_new).generation
        try:
            _reload(self.site, generation)
            took = self._check_through_gateway(new)
        except Exception:
            self._put_back(new, previous[0])
            raise
        self.replaced = previous[0]
        self.plan.serving = f"{new.describe()} behind {self.plan.url}"
        return f"gateway on route table generation {generation}; answered through it in {took * 1000:.0f} ms"

    def _put_back(self, new: Deployment, previous: Optional[Deployment]) -> None:
        """Undo a switch that could not be confirmed: the previous backend serves again."""
        def restore(state: State) -> None:
            if state.deployments.get(self.key) == new:
                if previous is None:
                    del state.deployments[self.key]
                else:
                    state.deployments[self.key] = previous

        generation = self.site.update(restore).generation
        with contextlib.suppress(Exception):
            _reload(self.site, generation)
        stop_backend(new)

    def _check_through_gateway(self, deployment: Deployment) -> float:
        """The new version answers at its URL, from the new backend."""
        release, site = self.release, self.site
        path = f"/v2/models/{release.name}/versions/{release.version}/ready"
        started = time.monotonic()
        status, headers, body = _get(site.port, path, host=f"{site.hostname(release.name)}:{site.port}", timeout=10)
        took = time.monotonic() - started
        if status != 200 or headers.get("x-ml-digest") != deployment.digest:
            raise RuntimeError(f"GET {path} through the gateway answered {status} from "
                               f"{headers.get('x-ml-digest') or 'no backend'}: {body[:300]!r}")
        return took

    def check_route(self) -> str:
        """The backend is unchanged but the gateway does not serve the current table."""
        generation = self.site.read().generation
        _reload(self.site, generation)
        current = self.site.read().deployments[self.key]
        took = self._check_through_gateway(current)
        return f"route table generation {generation}; answered in {took * 1000:.0f} ms"

    # -- after the switch

    def retire(self) -> str:
        old = self.replaced
        if old is None:
            return "nothing to stop"
        drained = _wait_idle(self.site, old.backend, timeout=self.release.timeout + 5)
        note = "" if drained else " (requests were still in flight through the gateway)"
        return f"{stop_backend(old)}{note}"

    def prune(self, stale: List[Path]) -> str:
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                (self.site.logs / f"{self.key}-{path.name}.log").unlink()
        return f"removed {len(stale)}, with their logs"


def start_gateway(site: Site, server_pex: Path) -> str:
    """Start the gateway from a copy of `server_pex` (held by the state directory, so that it
    outlives the package) and wait until it answers on the environment's port."""
    if not server_pex.is_file():
        raise RuntimeError(f"{server_pex} is missing: the package has no server.pex to run the gateway from")
    for path in (site.gateway_dir, site.logs):
        path.mkdir(parents=True, exist_ok=True)
    copy = site.gateway_dir / SERVER_PEX
    tmp = site.gateway_dir / f".server.pex.{os.getpid()}.tmp"
    shutil.copy2(server_pex, tmp)
    os.replace(tmp, copy)
    log = site.logs / "gateway.log"
    with log.open("ab") as out:
        out.write(f"--- {_now()} starting the gateway on 127.0.0.1:{site.port}\n".encode())
        out.flush()
        process = subprocess.Popen(
            [str(copy), "--routes", str(site.routes_file), "--host", "127.0.0.1", "--port", str(site.port)],
            cwd=site.gateway_dir, env=_child_env(site, "gateway", {"PEX_MODULE": GATEWAY_MODULE}),
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    pid_start = _proc_start(process.pid)
    deadline = time.monotonic() + GATEWAY_TIMEOUT
    while (_admin(site.port) or {}).get("pid") != process.pid:
        if process.poll() is not None or time.monotonic() > deadline:
            why = (f"exited with code {process.returncode}" if process.returncode is not None
                   else f"did not answer within {GATEWAY_TIMEOUT:g} s")
            _stop_process(process.pid, pid_start, timeout=5)
            raise RuntimeError(f"the gateway {why}; the end of its log ({log}):\n{_tail(log)}")
        time.sleep(0.02)
    _write_json(site.gateway_file, {"pid": process.pid, "pid_start": pid_start, "port": site.port,
                                    "server_pex": file_digest(copy), "started": _now()})
    return f"pid {process.pid}, listening on 127.0.0.1:{site.port}"


def stop_gateway(site: Site) -> str:
    gateway = gateway_state(site)
    how = _stop_process(gateway.pid, gateway.pid_start)
    with contextlib.suppress(FileNotFoundError):
        site.gateway_file.unlink()
    return how


# ----------------------------------------------------------------------------------------------
# The driver interface


def _serving(current: Optional[Deployment], ok: bool, release: Release, url: str) -> str:
    if current is None:
        return f"nothing ({release.name} v{release.version} was not deployed here)"
    if not ok:
        return f"nothing healthy ({current.describe()} is down or not ready)"
    return f"{current.describe()} behind {url}"


def _stale_copies(site: Site, state: State, release: Release) -> List[Path]:
    """Release copies of this model version beyond the live one and the one before it."""
    key = release_key(release.name, release.version)
    folder = site.releases / key
    if not folder.is_dir():
        return []
    keep = {short_digest(release.digest)}
    for digest in reversed(state.history.get(key, [])):
        if len(keep) >= KEEP_RELEASES:
            break
        keep.add(short_digest(digest))
    keep.update(short_digest(d.digest) for d in state.deployments.values() if d.key == key)
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in keep)


def plan(release: Release, environment: Environment) -> Plan:
    """Read-only: what deploying `release` locally would do."""
    site = Site(environment)
    release = dataclasses.replace(release, package_dir=Path(os.path.abspath(release.package_dir)))
    state = site.read()
    current = state.deployments.get(release_key(release.name, release.version))
    gateway = gateway_state(site)
    _check_port_is_ours(site, gateway)
    engine = connect_engine(environment)
    kind = CONTAINER if engine else PROCESS
    url = site.url(release.name, release.version)
    current_ok = current is not None and healthy(current)
    result = Plan(target=f"{release.name} v{release.version} -> local ({environment.name})",
                  digest=release.digest, serving=_serving(current, current_ok, release, url), url=url)
    rollout = Rollout(site, release, kind, engine, result)
    _plan_gateway(rollout, gateway)
    if kind == PROCESS:
        _plan_files(rollout)
    else:
        _plan_image(rollout)
    if current_ok and current is not None and current.digest == release.digest and current.kind == kind:
        _plan_live(rollout, current, gateway, state)
    else:
        _plan_new_backend(rollout, current, state)
    return result


def _plan_gateway(rollout: Rollout, gateway: Gateway) -> None:
    site, release = rollout.site, rollout.release
    where = f"gateway 127.0.0.1:{site.port}"
    if not (gateway.running and gateway.port == site.port):
        rollout.plan.add(REPLACE if gateway.alive else CREATE, where,
                         f"{GATEWAY_MODULE} from a copy of server.pex, detached", rollout.start_gateway)
        return
    # A running gateway is kept (restarting it would drop connections); say when packages now
    # carry another build of it.
    server_pex = release.package_dir / SERVER_PEX
    older = server_pex.is_file() and gateway.build not in (None, file_digest(server_pex))
    rollout.plan.add(UNCHANGED, where, f"pid {gateway.pid}" + (
        "; it runs an older server.pex than this package's (`stop`, then deploy, to update it)" if older else ""))


def _plan_files(rollout: Rollout) -> None:
    package, copy = rollout.release.package_dir, rollout.release_dir
    if (copy / ".complete").exists():
        rollout.plan.add(UNCHANGED, f"release files {copy}")
        return
    for name in (f"{MODEL_PEX}/__main__.py", SERVER_PEX):
        if not (package / name).exists():
            raise ConfigError(f"{package} has no {name}: deploy a model's package "
                              f"(dist/models.<name>/<name>/, what `pants package` writes)")
    rollout.plan.add(CREATE, f"release files {copy}", "a copy of model.pex and server.pex to run from",
                     rollout.copy_files)


def _plan_image(rollout: Rollout) -> None:
    assert rollout.engine is not None
    client, url = rollout.engine
    package = rollout.release.package_dir
    rollout.image = _image_id(rollout.release)
    image = f"image {short_digest(rollout.image)} in the engine ({url})"
    if _has_image(client, rollout.image):
        rollout.plan.add(UNCHANGED, image)
    elif (package / IMAGE_TAR).is_file():
        rollout.plan.add(CREATE, image, "load image.tar", rollout.load_image)
    else:
        raise ConfigError(f"the engine has no image {rollout.image} and {package} has no image.tar to load")


def _backend_name(rollout: Rollout) -> str:
    release = rollout.release
    return f"backend {release.name} v{release.version} {release.short_digest} ({rollout.kind})"


def _plan_live(rollout: Rollout, current: Deployment, gateway: Gateway, state: State) -> None:
    """The release already serves: nothing to do, unless the gateway missed a route table."""
    runner = f"pid {current.pid}" if current.pid else f"container {(current.container or '')[:12]}"
    rollout.plan.add(UNCHANGED, _backend_name(rollout), f"{current.backend}, {runner}")
    route = f"route {rollout.plan.url}"
    if not gateway.running or gateway.generation == state.generation:
        rollout.plan.add(UNCHANGED, route, f"-> {current.backend}")  # a starting gateway reads the table
    else:
        rollout.plan.add(UPDATE, route, f"the gateway serves route table generation {gateway.generation}, "
                                        f"not {state.generation}: reload it", rollout.check_route)


def _plan_new_backend(rollout: Rollout, current: Optional[Deployment], state: State) -> None:
    """Start the release beside what serves, switch the route, then retire the old backend."""
    result, environment = rollout.plan, rollout.site.environment
    how = "the packaged server (model.pex serve)" if rollout.kind == PROCESS else "a container"
    why = " (no container engine answered)" if environment.engine == "auto" and rollout.kind == PROCESS else ""
    route = f"route {result.url}"
    if current is None:
        result.add(CREATE, _backend_name(rollout), f"{how} on a free port of 127.0.0.1{why}", rollout.start_backend)
        result.add(CREATE, route, "-> the new backend, once it is ready", rollout.switch)
    else:
        result.add(REPLACE, _backend_name(rollout), f"{how}, started beside {current.describe()}{why}",
                   rollout.start_backend)
        result.add(UPDATE, route, f"{current.backend} -> the new backend, once it is ready", rollout.switch)
        result.add(DELETE, f"backend {current.describe()}",
                   "once the gateway has no request in flight to it: SIGTERM, it drains and exits", rollout.retire)
    stale = [p for p in _stale_copies(rollout.site, state, rollout.release)
             if current is None or p.name != short_digest(current.digest)]
    if stale:
        result.add(DELETE, f"old release copies {', '.join(p.name for p in stale)} of {rollout.key}",
                   f"keeping the last {KEEP_RELEASES}", lambda: rollout.prune(stale))


def plan_rollback(name: str, version: int, environment: Environment) -> Plan:
    """Serve again the release of `name` v`version` that was live before the current one."""
    site = Site(environment)
    state = site.read()
    key = release_key(name, version)
    current = state.deployments.get(key)
    earlier = [d for d in reversed(state.history.get(key, [])) if current is None or d != current.digest]
    if not earlier:
        raise ConfigError(f"{name} v{version} has no earlier release in environment {environment.name!r} "
                          f"to roll back to")
    folder = site.release_dir(name, version, earlier[0])
    try:
        record = json.loads((folder / "release.json").read_text())
    except (OSError, ValueError):
        raise ConfigError(f"the copy of {name} v{version} {short_digest(earlier[0])} is gone ({folder}); deploy it "
                          f"again from its commit") from None
    return plan(_release_from_record(record, folder), environment)


def deployments(environment: Environment) -> List[Dict[str, Any]]:
    """What is deployed, one entry per model version, for scripts and tests: name, version,
    digest, url, backend, kind, pid or container, started."""
    site = Site(environment)
    return [{"name": d.model, "version": d.version, "digest": d.digest, "url": site.url(d.model, d.version),
             "backend": d.backend, "kind": d.kind, "pid": d.pid, "container": d.container, "started": d.started}
            for _, d in sorted(site.read().deployments.items())]


def status(environment: Environment) -> str:
    site = Site(environment)
    state = site.read()
    gateway = gateway_state(site)
    lines = [f"environment {environment.name!r} (local; state in {site.root})"]
    if gateway.running:
        lines.append(f"gateway http://127.0.0.1:{site.port}: pid {gateway.pid}, route table generation "
                     f"{gateway.generation}" + ("" if gateway.generation == state.generation
                                                else f" (state has {state.generation})"))
    else:
        lines.append(f"gateway http://127.0.0.1:{site.port}: not running")
    if not state.deployments:
        lines.append("nothing deployed")
    for key, d in sorted(state.deployments.items()):
        health = "ready" if healthy(d) else ("not ready" if alive(d) else "down")
        lines.append(f"  {site.url(d.model, d.version):<44} {health:<9} {short_digest(d.digest)}  "
                     f"{d.kind} " + (f"pid {d.pid}" if d.kind == PROCESS else f"container {(d.container or '')[:12]}")
                     + f" on {d.backend}, since {d.started}")
    known = {d.pid for d in state.deployments.values() if d.pid} | ({gateway.pid} if gateway.pid else set())
    for group, key in sorted(_strays(site, known).items()):
        lines.append(f"  stray process group {group} ({key}): not deployed; `stop` ends it")
    return "\n".join(lines)


def stop(environment: Environment, model: Optional[str] = None, say: Callable[[str], None] = print,
         version: Optional[int] = None) -> None:
    """Stop `model`'s versions (or only `version`; or everything), each once the gateway no
    longer routes to it and has nothing in flight to it; and the gateway when nothing is left."""
    site = Site(environment)
    chosen = [d for d in site.read().deployments.values()
              if (model is None or d.model == model) and (version is None or d.version == version)]
    if model is not None and not chosen:
        which = f"{model} v{version}" if version is not None else model
        say(f"{which} is not deployed in environment {environment.name!r}")
    if chosen:
        state = site.update(lambda s: [s.deployments.pop(d.key, None) for d in chosen])
        with contextlib.suppress(RuntimeError):
            _reload(site, state.generation)
        for d in chosen:
            _wait_idle(site, d.backend, timeout=10)
            say(f"stopped {d.describe()}: {stop_backend(d)}")
    state = site.read()
    gateway = gateway_state(site)
    if not state.deployments and gateway.pid:
        say(f"stopped the gateway on 127.0.0.1:{site.port} (pid {gateway.pid}): {stop_gateway(site)}")
        gateway = gateway_state(site)
    known = {d.pid for d in state.deployments.values() if d.pid} | ({gateway.pid} if gateway.alive else set())
    for group, key in _strays(site, known, model).items():
        say(f"stopped a stray process group {group} ({key}): {_stop_group(group)}")
    _stop_stray_containers(site, {d.container for d in state.deployments.values() if d.container}, model, say)


def _stop_stray_containers(site: Site, known: set, model: Optional[str], say: Callable[[str], None]) -> None:
    if site.environment.engine == PROCESS:
        return
    try:
        engine = connect_engine(site.environment)
    except ConfigError:
        return
    if engine is None:
        return
    client, _ = engine
    labels = [f"ml.state={site.root}"] + ([f"ml.model={model}"] if model else [])
    for container in client.containers.list(all=True, filters={"label": labels}):
        if container.id not in known:
            container.stop(timeout=int(STOP_TIMEOUT - 5))
            container.remove(force=True)
            say(f"stopped a stray container {container.name}")
