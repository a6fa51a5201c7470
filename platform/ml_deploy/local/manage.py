"""What runs in a local environment (`status`, `deployments`) and ending it (`stop`)."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, List, Optional

from ml_deploy.config import ConfigError, Environment
from ml_deploy.local import backends
from ml_deploy.local.gateway import gateway_state, reload, stop_gateway, wait_idle
from ml_deploy.local.processes import stop_group, strays
from ml_deploy.local.state import Site
from ml_deploy.release import short_digest


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
        backend = backends.of(d)
        health = "ready" if backend.healthy(d) else ("not ready" if backend.alive(d) else "down")
        lines.append(f"  {site.url(d.model, d.version):<44} {health:<9} {short_digest(d.digest)}  "
                     f"{d.kind} {d.runner} on {d.backend}, since {d.started}")
    known = {d.pid for d in state.deployments.values() if d.pid} | ({gateway.pid} if gateway.pid else set())
    for group, key in sorted(strays(site, known).items()):
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
            reload(site, state.generation)
        for d in chosen:
            wait_idle(site, d.backend, timeout=10)
            say(f"stopped {d.describe()}: {backends.of(d).stop(d)}")
    state = site.read()
    gateway = gateway_state(site)
    if not state.deployments and gateway.pid:
        say(f"stopped the gateway on 127.0.0.1:{site.port} (pid {gateway.pid}): {stop_gateway(site)}")
        gateway = gateway_state(site)
    known = {d.pid for d in state.deployments.values() if d.pid} | ({gateway.pid} if gateway.alive else set())
    for group, key in strays(site, known, model).items():
        say(f"stopped a stray process group {group} ({key}): {stop_group(group)}")
    try:
        backend = backends.choose(environment)
    except ConfigError:  # engine: docker, and none answers: it runs no stray either
        return
    backend.stop_strays(site, {d.container for d in state.deployments.values() if d.container}, model, say)
