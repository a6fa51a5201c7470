"""How a model version runs locally: one interface, two backends.

- `ProcessBackend`: the packaged server (`model.pex serve`), run from a copy of the package
  kept in the state directory, as a detached process;
- `ContainerBackend`: the model's image, loaded into a Docker-API engine and run with host
  networking; containers carry the label ml.state=<state dir> so that `stop` finds strays.

Both put the server on a free port of 127.0.0.1 and return a `Deployment` once it is ready.
"""

from __future__ import annotations

import abc
import contextlib
import json
import os
import re
import shutil
import socket
import time
from typing import Any, Callable, Dict, Optional

from ml_contract.package_layout import IMAGE_LAYOUT, MODEL_PEX, OCI_INDEX, READY_PATH, SERVER_PEX
from ml_deploy import secrets
from ml_deploy.config import ConfigError, Environment
from ml_deploy.local import probe
from ml_deploy.local.processes import STOP_TIMEOUT, alive, spawn, stop_process
from ml_deploy.local.state import (
    CONTAINER,
    PROCESS,
    RELEASE_RECORD,
    Deployment,
    Site,
    now,
    release_key,
    tail,
    write_json,
)
from ml_deploy.plan import CREATE, UNCHANGED, Plan
from ml_deploy.release import Release, short_digest

COMPLETE_MARK = ".complete"  # in a release copy, once every file is in place


class BackendFailed(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def release_record(release: Release, kind: str, image: Optional[str]) -> Dict[str, Any]:
    """What a release copy keeps about its release (release.json), to roll back to it."""
    return {"settings": release.settings.to_dict(), "digest": release.digest, "kind": kind, "image": image}


def _tag(release: Release) -> str:
    return f"{release_key(release.name, release.version)}-{release.short_digest}"


class Backend(abc.ABC):
    kind: str
    how: str  # for plans: how the release is run

    def image_of(self, release: Release) -> Optional[str]:
        """What this backend runs of the release besides its files: an engine's image id."""
        return None

    @abc.abstractmethod
    def plan_artifacts(self, plan: Plan, site: Site, release: Release) -> None:
        """Adds the step that puts what the release runs from in place (or says it is there)."""

    @abc.abstractmethod
    def start(self, site: Site, release: Release) -> Deployment:
        """Start the release on a free port of 127.0.0.1; return once it is ready."""

    @abc.abstractmethod
    def alive(self, deployment: Deployment) -> bool:
        ...

    @abc.abstractmethod
    def stop(self, deployment: Deployment) -> str:
        """Stop `deployment` (it drains first); say how it went."""

    def stop_strays(self, site: Site, known: set, model: Optional[str], say: Callable[[str], None]) -> None:
        """Stop what this backend started from `site` that no deployment in `known` owns."""

    def healthy(self, deployment: Deployment) -> bool:
        return self.alive(deployment) and probe.ready(deployment.backend)

    def _deployment(self, site: Site, release: Release, backend: str, **runner: Any) -> Deployment:
        release_dir = site.copy_of(release)
        return Deployment(model=release.name, version=release.version, digest=release.digest,
                          backend=backend, kind=self.kind, started=now(),
                          release_dir=str(release_dir.relative_to(site.root)), **runner)

    def _record(self, site: Site, release: Release) -> None:
        release_dir = site.copy_of(release)
        for path in (site.logs, site.run_dir, release_dir):
            path.mkdir(parents=True, exist_ok=True)
        record = release_dir / RELEASE_RECORD
        if not record.exists():
            write_json(record, release_record(release, self.kind, self.image_of(release)))


class ProcessBackend(Backend):
    kind = PROCESS
    how = "the packaged server (model.pex serve)"

    def __init__(self, fallback: bool = False) -> None:
        # Chosen because no container engine answered (engine: auto): plans say so.
        self.how = ProcessBackend.how + (" (no container engine answered)" if fallback else "")

    def plan_artifacts(self, plan: Plan, site: Site, release: Release) -> None:
        package, copy = release.package_dir, site.copy_of(release)
        if (copy / COMPLETE_MARK).exists():
            plan.add(UNCHANGED, f"release files {copy}")
            return
        for name in (f"{MODEL_PEX}/__main__.py", SERVER_PEX):
            if not (package / name).exists():
                raise ConfigError(f"{package} has no {name}: deploy a model's package "
                                  f"(dist/models.<name>/<name>/, what `pants package` writes)")
        plan.add(CREATE, f"release files {copy}", "a copy of model.pex and server.pex to run from",
                 lambda: self.copy_files(site, release))

    def copy_files(self, site: Site, release: Release) -> str:
        target = site.copy_of(release)
        if (target / COMPLETE_MARK).exists():
            return "another deploy copied them"
        started = time.monotonic()
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        shutil.copytree(release.package_dir / MODEL_PEX, tmp / MODEL_PEX, symlinks=True)
        shutil.copy2(release.package_dir / SERVER_PEX, tmp / SERVER_PEX)
        write_json(tmp / RELEASE_RECORD, release_record(release, PROCESS, None))
        (tmp / COMPLETE_MARK).write_text("")
        shutil.rmtree(target, ignore_errors=True)  # an incomplete copy of an interrupted deploy
        os.rename(tmp, target)
        size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
        return f"{size / 2**20:.0f} MiB in {time.monotonic() - started:.1f} s"

    def start(self, site: Site, release: Release) -> Deployment:
        from ml_image.engine import wait_for_200

        self._record(site, release)
        release_dir = site.copy_of(release)
        ready_file = site.run_dir / f"{_tag(release)}-{os.getpid()}-{time.monotonic_ns()}.url"
        log = site.logs / f"{_tag(release)}.log"
        process, pid_start = spawn(
            site, release_key(release.name, release.version),
            [str(release_dir / MODEL_PEX / "__main__.py"), "serve",
             "--host", "127.0.0.1", "--port", "0", "--ready-file", str(ready_file)],
            cwd=release_dir, log=log, banner=f"deploy of {release.name} v{release.version} {release.digest}",
            extra_env=_model_env(site, release))

        def fail(why: str) -> BackendFailed:
            stop_process(process.pid, pid_start, timeout=10)
            with contextlib.suppress(OSError):
                ready_file.unlink()
            return BackendFailed(f"{release.name} v{release.version} {release.short_digest} {why}; "
                                 f"the end of its log ({log}):\n{tail(log)}")

        deadline = time.monotonic() + release.settings.effective_load_timeout
        while not ready_file.exists():
            if process.poll() is not None:
                raise fail(f"exited with code {process.returncode} before it was ready")
            if time.monotonic() > deadline:
                raise fail(f"was not ready within {release.settings.effective_load_timeout} s (its `load_timeout`)")
            time.sleep(0.02)
        backend = ready_file.read_text().strip().removeprefix("http://")
        ready_file.unlink()
        if not wait_for_200(f"http://{backend}{READY_PATH}", max(1.0, deadline - time.monotonic()),
                            lambda: process.poll() is None):
            raise fail(f"listens on {backend} but {READY_PATH} never answered 200")
        return self._deployment(site, release, backend, pid=process.pid, pid_start=pid_start,
                                log=str(log.relative_to(site.root)))

    def alive(self, deployment: Deployment) -> bool:
        return alive(deployment.pid, deployment.pid_start)

    def stop(self, deployment: Deployment) -> str:
        return stop_process(deployment.pid, deployment.pid_start)


class ContainerBackend(Backend):
    kind = CONTAINER
    how = "a container"

    def __init__(self, url: str, client: Any = None) -> None:
        self.url, self._client = url, client

    @property
    def client(self) -> Any:
        """The engine's client, connected on first use (checking a deployment whose engine is
        gone must not fail before it is asked)."""
        if self._client is None:
            from ml_image import engine

            self._client = engine.connect(self.url)
        return self._client

    def image_of(self, release: Release) -> str:
        """The image's config digest: what an engine calls the image once loaded."""
        from ml_image.registry import read_layout

        layout = release.package_dir / IMAGE_LAYOUT
        if layout.is_dir():
            return read_layout(layout).config.digest
        record = release.package_dir / RELEASE_RECORD  # a kept release, for rollback
        image = json.loads(record.read_text()).get("image") if record.exists() else None
        if not image:
            raise ConfigError(f"{release.package_dir} has no image layout ({IMAGE_LAYOUT}/) to run as a container")
        return image

    def _has_image(self, image_id: str) -> bool:
        from docker.errors import ImageNotFound

        try:
            self.client.images.get(image_id)
            return True
        except ImageNotFound:
            return False

    def plan_artifacts(self, plan: Plan, site: Site, release: Release) -> None:
        image_id, package = self.image_of(release), release.package_dir
        image = f"image {short_digest(image_id)} in the engine ({self.url})"
        if self._has_image(image_id):
            plan.add(UNCHANGED, image)
        elif (package / IMAGE_LAYOUT / OCI_INDEX).is_file():
            plan.add(CREATE, image, f"load {IMAGE_LAYOUT}/", lambda: self.load_image(release, image_id))
        else:
            raise ConfigError(f"the engine has no image {image_id} and {package} has no {IMAGE_LAYOUT}/ to load")

    def load_image(self, release: Release, image_id: str) -> str:
        from ml_image import engine

        started = time.monotonic()
        layout = release.package_dir / IMAGE_LAYOUT
        engine.load(self.client, layout)
        if not self._has_image(image_id):
            raise RuntimeError(f"the engine loaded {layout} but has no image {image_id}: is it the "
                               "package's image?")
        return f"loaded in {time.monotonic() - started:.1f} s"

    def start(self, site: Site, release: Release) -> Deployment:
        from ml_image.engine import wait_for_200

        self._record(site, release)
        port = _free_port()
        name = re.sub(r"[^a-zA-Z0-9_.-]", "-", f"ml-{site.environment.name}-{_tag(release)}-{port}")
        container = self.client.containers.run(
            self.image_of(release), detach=True, name=name,
            # Host networking keeps the server on 127.0.0.1 (no bridge network, no private addresses).
            network_mode="host",
            environment={**_model_env(site, release), "ML_PORT": str(port), "ML_HOST": "127.0.0.1"},
            labels={**release.labels(), "ml.state": str(site.root), "ml.environment": site.environment.name},
        )
        deployment = self._deployment(site, release, f"127.0.0.1:{port}", container=container.id, engine=self.url)

        def running() -> bool:
            container.reload()
            return container.status not in ("exited", "dead")

        if wait_for_200(f"http://127.0.0.1:{port}{READY_PATH}", release.settings.effective_load_timeout, running, interval=0.05):
            return deployment
        logs = container.logs().decode(errors="replace")[-3000:]
        container.remove(force=True)
        raise BackendFailed(f"{release.name} v{release.version} {release.short_digest} (container {name}) was not "
                            f"ready within {release.settings.effective_load_timeout} s (its `load_timeout`) or exited; its log:\n{logs}")

    def _container(self, deployment: Deployment) -> Any:
        """The deployment's container, or None if it is gone."""
        from docker.errors import NotFound

        try:
            return self.client.containers.get(deployment.container)
        except NotFound:
            return None

    def alive(self, deployment: Deployment) -> bool:
        try:
            container = self._container(deployment)
        except Exception:  # the engine is gone: so is what it ran, as far as we can tell
            return False
        return container is not None and container.status == "running"

    def stop(self, deployment: Deployment) -> str:
        container = self._container(deployment)
        if container is None:
            return "had already been removed"
        started = time.monotonic()
        container.stop(timeout=int(STOP_TIMEOUT - 5))  # SIGTERM: drains; then SIGKILL
        container.remove(force=True)
        return f"drained, exited and was removed in {time.monotonic() - started:.1f} s"

    def stop_strays(self, site: Site, known: set, model: Optional[str], say: Callable[[str], None]) -> None:
        labels = [f"ml.state={site.root}"] + ([f"ml.model={model}"] if model else [])
        for container in self.client.containers.list(all=True, filters={"label": labels}):
            if container.id not in known:
                container.stop(timeout=int(STOP_TIMEOUT - 5))
                container.remove(force=True)
                say(f"stopped a stray container {container.name}")


def _model_env(site: Site, release: Release) -> Dict[str, str]:
    """The model's environment variables, its secrets' values (read now, from this deploy's
    environment variables or files) included: they go to the process or container only."""
    found = secrets.sources(release.settings.secrets, site.environment, release.name, secrets.LOCAL_KINDS)
    return {**release.runtime_env(site.environment), **secrets.local_values(found)}


def choose(environment: Environment) -> Backend:
    """The backend new releases run on in `environment` (its `engine` setting)."""
    if environment.engine == PROCESS:
        return ProcessBackend()
    from ml_image import engine

    try:
        client, url = engine.connect_with_url()
    except engine.EngineUnavailable as e:
        if environment.engine == "docker":
            raise ConfigError(f"environment {environment.name!r} has engine: docker, but {e} "
                              f"(or set engine: process, or auto, to run the packaged server instead)") from None
        return ProcessBackend(fallback=True)
    return ContainerBackend(url, client)


def of(deployment: Deployment) -> Backend:
    """The backend a deployment runs on, to check or stop it."""
    if deployment.kind == PROCESS:
        return ProcessBackend()
    return ContainerBackend(deployment.engine or "")
