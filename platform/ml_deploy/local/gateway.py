"""The local gateway as the deploy tools see it: is it running, on which route table, with what
in flight; start it from the gateway.pex `pants deploy` hands over; reload; stop."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

from ml_contract.route_table import ADMIN_ROUTES_PATH
from ml_deploy.config import ConfigError
from ml_deploy.local import probe
from ml_deploy.local.processes import alive, spawn, stop_process
from ml_deploy.local.state import Site, now, tail, write_json
from ml_image.layers import file_digest

START_TIMEOUT = 60.0  # its first start unpacks gateway.pex's environment
RELOAD_TIMEOUT = 10.0


def _admin(port: int) -> Optional[Dict[str, Any]]:
    """The gateway's /-/routes on `port`; None if nothing listens there, {} if something that is
    not a gateway does."""
    try:
        status, _, body = probe.get(port, ADMIN_ROUTES_PATH)
    except ConnectionError:  # refused: nothing listens; reset: what listened is exiting
        return None
    except (OSError, http.client.HTTPException):
        return {}
    try:
        data = json.loads(body)
    except ValueError:
        return {}
    return data if status == 200 and isinstance(data, dict) and "generation" in data else {}


@dataclass(frozen=True)
class GatewayStatus:
    pid: Optional[int]
    pid_start: Optional[int]
    port: Optional[int]  # where it was started
    build: Optional[str]  # the digest of the gateway.pex it runs from
    alive: bool  # its process runs
    answering: Optional[Dict[str, Any]]  # its /-/routes, if it answers on the environment's port

    @property
    def running(self) -> bool:
        return self.alive and bool(self.answering) and self.answering.get("pid") == self.pid

    @property
    def generation(self) -> Optional[int]:
        return self.answering.get("generation") if self.running and self.answering else None


def gateway_state(site: Site) -> GatewayStatus:
    try:
        info = json.loads(site.gateway_file.read_text())
    except (OSError, ValueError):
        info = {}
    pid, pid_start = info.get("pid"), info.get("pid_start")
    return GatewayStatus(pid, pid_start, info.get("port"), info.get("gateway_pex"), alive(pid, pid_start),
                         _admin(site.port))


def check_port_is_ours(site: Site, gateway: GatewayStatus) -> None:
    if gateway.answering is not None and not gateway.running:
        raise ConfigError(
            f"127.0.0.1:{site.port} is taken by a program that is not the gateway of environment "
            f"{site.environment.name!r} (state in {site.root}): another program, or another "
            f"environment's gateway. Set another gateway_port for {site.environment.name!r} in the "
            f"deploy environments file, or stop what listens there.")


def gateway_source(site: Site, offered: Optional[Path]) -> Path:
    """The gateway.pex to start from: the one this deploy was handed, else the copy the state
    directory kept from an earlier start (a rollback is handed none)."""
    if offered is not None:
        if not offered.is_file():
            raise ConfigError(f"{offered} is missing: --gateway-pex must name the gateway's PEX "
                              f"(`pants package //platform:gateway`)")
        return offered
    if site.gateway_pex.is_file():
        return site.gateway_pex
    raise ConfigError(f"no gateway to start in environment {site.environment.name!r}: deploy with "
                      f"`pants deploy` (it hands over //platform:gateway) or pass --gateway-pex")


def start_gateway(site: Site, gateway_pex: Path) -> str:
    """Start the gateway from a copy of `gateway_pex` (held by the state directory, so that it
    outlives the sandbox it came from) and wait until it answers on the environment's port."""
    for path in (site.gateway_dir, site.logs):
        path.mkdir(parents=True, exist_ok=True)
    if gateway_pex.resolve() != site.gateway_pex.resolve():
        tmp = site.gateway_dir / f".{site.gateway_pex.name}.{os.getpid()}.tmp"
        shutil.copy2(gateway_pex, tmp)
        os.replace(tmp, site.gateway_pex)
    log = site.logs / "gateway.log"
    process, pid_start = spawn(
        site, "gateway", [str(site.gateway_pex), "--routes", str(site.routes_file), "--host", "127.0.0.1",
                          "--port", str(site.port)],
        cwd=site.gateway_dir, log=log, banner=f"starting the gateway on 127.0.0.1:{site.port}", extra_env={})
    deadline = time.monotonic() + START_TIMEOUT
    while (_admin(site.port) or {}).get("pid") != process.pid:
        if process.poll() is not None or time.monotonic() > deadline:
            why = (f"exited with code {process.returncode}" if process.returncode is not None
                   else f"did not answer within {START_TIMEOUT:g} s")
            stop_process(process.pid, pid_start, timeout=5)
            raise RuntimeError(f"the gateway {why}; the end of its log ({log}):\n{tail(log)}")
        time.sleep(0.02)
    write_json(site.gateway_file, {"pid": process.pid, "pid_start": pid_start, "port": site.port,
                                   "gateway_pex": file_digest(site.gateway_pex), "started": now()})
    return f"pid {process.pid}, listening on 127.0.0.1:{site.port}"


def stop_gateway(site: Site) -> str:
    gateway = gateway_state(site)
    how = stop_process(gateway.pid, gateway.pid_start)
    with contextlib.suppress(FileNotFoundError):
        site.gateway_file.unlink()
    return how


def reload(site: Site, generation: int) -> None:
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


def wait_idle(site: Site, backend: str, timeout: float) -> bool:
    """Wait until the gateway has no request in flight to `backend` (True), or `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = _admin(site.port)
        if not data or not data.get("in_flight", {}).get(backend):
            return True
        time.sleep(0.02)
    return False
