"""One local deploy as a plan: the gateway, what the release runs from, its backend, the route.

A redeploy starts the new backend beside the old one, waits until it is ready, switches the
route, checks that the gateway loaded the new table and that the new version answers through it,
waits until the gateway has no request in flight to the old backend, and only then stops it (the
server drains and exits). A step that fails puts the previous route back and stops what it
started, so the previous version keeps serving. Steps hand what they produce to the steps after
them as values (`Outcome`): the backend step the new deployment, the route step the one it
replaced.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from ml_contract.model_settings import ModelSettings
from ml_deploy import secrets
from ml_deploy.config import ConfigError, Environment
from ml_deploy.local import backends, probe
from ml_deploy.local.backends import Backend
from ml_deploy.local.gateway import (
    GatewayStatus,
    check_port_is_ours,
    gateway_source,
    gateway_state,
    reload,
    start_gateway,
    stop_gateway,
    wait_idle,
)
from ml_deploy.local.state import HISTORY, RELEASE_RECORD, Deployment, Site, State, release_key
from ml_deploy.plan import CREATE, DELETE, REPLACE, UNCHANGED, UPDATE, Outcome, Plan
from ml_deploy.release import Release, short_digest
from ml_image.layers import file_digest

KEEP_RELEASES = 2  # copies kept per model version: the live one and the one before (rollback)


@dataclass(frozen=True)
class Rollout:
    site: Site
    release: Release
    backend: Backend
    plan: Plan  # its `serving` is updated once the route is switched

    @property
    def key(self) -> str:
        return release_key(self.release.name, self.release.version)

    # -- gateway

    def start_gateway(self, gateway_pex: Path) -> str:
        site = self.site
        with site.locked():
            gateway = gateway_state(site)
            if gateway.running and gateway.port == site.port:
                return f"another deploy started it (pid {gateway.pid})"
            if gateway.alive:
                stop_gateway(site)
            if not site.routes_file.exists():
                site.write(site.read())
            return start_gateway(site, gateway_pex)

    # -- backend

    def start_backend(self) -> Outcome:
        started = time.monotonic()
        new = self.backend.start(self.site, self.release)
        return Outcome(f"ready on {new.backend} in {time.monotonic() - started:.1f} s", new)

    # -- route

    def switch(self, new: Deployment) -> Outcome:
        """Route to `new`; the value is the deployment it replaced, if any."""
        replaced: List[Optional[Deployment]] = [None]

        def put_new(state: State) -> None:
            replaced[0] = state.deployments.get(self.key)
            state.deployments[self.key] = new
            history = state.history.setdefault(self.key, [])
            if not history or history[-1] != new.digest:
                history.append(new.digest)
            del history[:-HISTORY]

        generation = self.site.update(put_new).generation
        try:
            reload(self.site, generation)
            took = self._check_through_gateway(new)
        except Exception:
            self._put_back(new, replaced[0])
            raise
        self.plan.serving = f"{new.describe()} behind {self.plan.url}"
        return Outcome(f"gateway on route table generation {generation}; answered through it in "
                       f"{took * 1000:.0f} ms", replaced[0])

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
            reload(self.site, generation)
        self.backend.stop(new)

    def _check_through_gateway(self, deployment: Deployment) -> float:
        """The new version answers at its URL, from the new backend."""
        release, site = self.release, self.site
        path = f"/v2/models/{release.name}/versions/{release.version}/ready"
        started = time.monotonic()
        status, headers, body = probe.get(site.port, path, host=f"{site.hostname(release.name)}:{site.port}",
                                          timeout=10)
        took = time.monotonic() - started
        if status != 200 or headers.get("x-ml-digest") != deployment.digest:
            raise RuntimeError(f"GET {path} through the gateway answered {status} from "
                               f"{headers.get('x-ml-digest') or 'no backend'}: {body[:300]!r}")
        return took

    def check_route(self) -> str:
        """The backend is unchanged but the gateway does not serve the current table."""
        generation = self.site.read().generation
        reload(self.site, generation)
        current = self.site.read().deployments[self.key]
        took = self._check_through_gateway(current)
        return f"route table generation {generation}; answered in {took * 1000:.0f} ms"

    # -- after the switch

    def retire(self, old: Optional[Deployment]) -> str:
        if old is None:
            return "nothing to stop"
        drained = wait_idle(self.site, old.backend, timeout=self.release.settings.timeout + 5)
        note = "" if drained else " (requests were still in flight through the gateway)"
        return f"{backends.of(old).stop(old)}{note}"

    def prune(self, stale: List[Path]) -> str:
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                (self.site.logs / f"{self.key}-{path.name}.log").unlink()
        return f"removed {len(stale)}, with their logs"


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


def plan(release: Release, environment: Environment, gateway_pex: Optional[Path] = None) -> Plan:
    """Read-only: what deploying `release` locally would do. `gateway_pex` is the gateway build
    to start if none runs (without it, the one the state directory kept)."""
    site = Site(environment)
    release = dataclasses.replace(release, package_dir=Path(os.path.abspath(release.package_dir)))
    state = site.read()
    current = state.deployments.get(release_key(release.name, release.version))
    gateway = gateway_state(site)
    check_port_is_ours(site, gateway)
    backend = backends.choose(environment)
    # Every secret can be read now, or the plan fails naming it and where it looked (the values
    # are read again, and only, when the model starts).
    secrets.local_values(secrets.sources(release.settings.secrets, environment, release.name, secrets.LOCAL_KINDS))
    url = site.url(release.name, release.version)
    current_ok = current is not None and backends.of(current).healthy(current)
    result = Plan(target=f"{release.name} v{release.version} -> local ({environment.name})",
                  digest=release.digest, serving=_serving(current, current_ok, release, url), url=url)
    rollout = Rollout(site, release, backend, result)
    _plan_gateway(rollout, gateway, gateway_pex)
    backend.plan_artifacts(result, site, release)
    if current_ok and current is not None and current.digest == release.digest and current.kind == backend.kind:
        _plan_live(rollout, current, gateway, state)
    else:
        _plan_new_backend(rollout, current, state)
    return result


def _plan_gateway(rollout: Rollout, gateway: GatewayStatus, gateway_pex: Optional[Path]) -> None:
    site = rollout.site
    where = f"gateway 127.0.0.1:{site.port}"
    if not (gateway.running and gateway.port == site.port):
        source = gateway_source(site, gateway_pex)
        rollout.plan.add(REPLACE if gateway.alive else CREATE, where, f"{source.name}, detached",
                         lambda: rollout.start_gateway(source))
        return
    # A running gateway is kept (restarting it would drop connections); say when this deploy
    # carries another build of it.
    older = gateway_pex is not None and gateway.build not in (None, file_digest(gateway_pex))
    rollout.plan.add(UNCHANGED, where, f"pid {gateway.pid}" + (
        "; it runs an older gateway.pex than this deploy's (`stop`, then deploy, to update it)" if older else ""))


def _backend_name(rollout: Rollout) -> str:
    release = rollout.release
    return f"backend {release.name} v{release.version} {release.short_digest} ({rollout.backend.kind})"


def _plan_live(rollout: Rollout, current: Deployment, gateway: GatewayStatus, state: State) -> None:
    """The release already serves: nothing to do, unless the gateway missed a route table."""
    rollout.plan.add(UNCHANGED, _backend_name(rollout), f"{current.backend}, {current.runner}")
    route = f"route {rollout.plan.url}"
    if not gateway.running or gateway.generation == state.generation:
        rollout.plan.add(UNCHANGED, route, f"-> {current.backend}")  # a starting gateway reads the table
    else:
        rollout.plan.add(UPDATE, route, f"the gateway serves route table generation {gateway.generation}, "
                                        f"not {state.generation}: reload it", rollout.check_route)


def _plan_new_backend(rollout: Rollout, current: Optional[Deployment], state: State) -> None:
    """Start the release beside what serves, switch the route, then retire the old backend."""
    result, how = rollout.plan, rollout.backend.how
    route = f"route {result.url}"
    if current is None:
        start = result.add(CREATE, _backend_name(rollout), f"{how} on a free port of 127.0.0.1",
                           rollout.start_backend)
        result.add(CREATE, route, "-> the new backend, once it is ready", lambda: rollout.switch(start.value))
    else:
        start = result.add(REPLACE, _backend_name(rollout), f"{how}, started beside {current.describe()}",
                           rollout.start_backend)
        switch = result.add(UPDATE, route, f"{current.backend} -> the new backend, once it is ready",
                            lambda: rollout.switch(start.value))
        result.add(DELETE, f"backend {current.describe()}",
                   "once the gateway has no request in flight to it: SIGTERM, it drains and exits",
                   lambda: rollout.retire(switch.value))
    stale = [p for p in _stale_copies(rollout.site, state, rollout.release)
             if current is None or p.name != short_digest(current.digest)]
    if stale:
        result.add(DELETE, f"old release copies {', '.join(p.name for p in stale)} of {rollout.key}",
                   f"keeping the last {KEEP_RELEASES}", lambda: rollout.prune(stale))


def _release_from_record(record: dict, package_dir: Path) -> Release:
    return Release(ModelSettings.from_dict(record["settings"]), package_dir, record["digest"])


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
        release = _release_from_record(json.loads((folder / RELEASE_RECORD).read_text()), folder)
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"the copy of {name} v{version} {short_digest(earlier[0])} is gone or unreadable "
                          f"({folder}); deploy it again from its commit") from None
    return plan(release, environment)
