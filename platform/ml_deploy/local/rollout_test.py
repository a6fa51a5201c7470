"""The `local` driver with the real gateway (run from the gateway.pex Pants builds) in front of
small fake model servers: plans, idempotency, dry runs, zero-downtime redeploys, failures that
leave the previous version serving, versions side by side, rollback, status and stop.

The fake server is a stand-in for a packaged model's `model.pex/__main__.py serve`: it takes the
same options, answers the same readiness routes and, like the real server, drains on SIGTERM and
refuses new work with 503 once stopping. The integration test (tests/integration/
deploy_local_test.py) does the same with the real packaged iris model and podman.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from ml_deploy import local
from ml_deploy.local import backends
from ml_deploy.local.gateway import gateway_state
from ml_deploy.local.processes import child_env, marked_processes
from ml_deploy.local.state import Deployment, Site
from ml_deploy.config import ConfigError, Environment
from ml_deploy.plan import CREATE, DELETE, REPLACE, UNCHANGED, UPDATE, DeployFailed, Plan, execute
from ml_contract.model_settings import ModelSettings
from ml_deploy.release import Release
from testutil.load import steady_load, teardown_on_sigterm
from testutil.net import free_port

# Both put here by runtime_package_dependencies.
GATEWAY_PEX = Path("gateway.pex")  # //platform:gateway
SERVER_PEX = Path("server.pex")  # //platform:server

FAKE_SERVER = r'''#!/usr/bin/env python3
"""A fake model server: `serve --host H --port 0 --ready-file F` like model.pex/__main__.py."""
import argparse, http.server, json, os, signal, sys, threading, time
from pathlib import Path

manifest = json.loads((Path(__file__).parent / "manifest.json").read_text())
name, version = manifest["name"], manifest["version"]
parser = argparse.ArgumentParser()
parser.add_argument("command")
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--port", type=int, default=0)
parser.add_argument("--ready-file")
args = parser.parse_args()
if os.environ.get("FAKE_FAIL"):
    print("fake: the model could not be loaded", flush=True)
    sys.exit(3)
if os.environ.get("FAKE_HANG"):
    time.sleep(3600)
stopping = threading.Event()
READY = {"/v2/health/ready", f"/v2/models/{name}/versions/{version}/ready"}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10

    def reply(self, status, payload):
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path in READY:
            self.reply(503 if stopping.is_set() else 200, {"ready": not stopping.is_set()})
        else:
            self.reply(404, {"error": f"no route {self.path}"})

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        if stopping.is_set():  # what the real server does once SIGTERMed
            return self.reply(503, {"error": "server is shutting down"})
        time.sleep(float(os.environ.get("FAKE_DELAY", "0.002")))
        if self.path == f"/v{version}/predict":
            self.reply(200, {"version": version, "id": os.environ.get("FAKE_ID", ""), "pid": os.getpid()})
        else:
            self.reply(404, {"error": f"no route {self.path}"})

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer((args.host, args.port), Handler)
server.block_on_close = True


def stop(*_):
    stopping.set()
    threading.Thread(target=server.shutdown).start()


signal.signal(signal.SIGTERM, stop)
url = "http://%s:%d" % server.server_address[:2]
print(json.dumps({"event": "serving", "url": url}), flush=True)
Path(args.ready_file + ".tmp").write_text(url)
os.replace(args.ready_file + ".tmp", args.ready_file)
server.serve_forever()
server.server_close()  # waits for the requests in flight
print(json.dumps({"event": "stopped"}), flush=True)
'''




@pytest.fixture
def environment(tmp_path: Path) -> Iterator[Environment]:
    teardown_on_sigterm()
    assert GATEWAY_PEX.is_file() and SERVER_PEX.is_file(), \
        "needs runtime_package_dependencies=['//platform:gateway', '//platform:server']"
    env = Environment(name="test", compute="local", gateway_port=free_port(),
                      state_dir=str(tmp_path / "state"), engine="process")
    yield env
    local.stop(env, say=lambda _: None)
    left = marked_processes(Site(env))
    for pid in left:  # leave nothing running, even when the assertion below fails
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left running: {left}"


_digests = iter(range(1, 10**6))


def fake_release(tmp_path: Path, name: str = "fake", version: int = 1, **env: str) -> Release:
    """A package with the fake server as model.pex and the real server.pex (only copied), under
    a digest of its own."""
    package = tmp_path / f"package-{name}-{version}"
    if not package.exists():
        (package / "model.pex").mkdir(parents=True)
        main = package / "model.pex" / "__main__.py"
        main.write_text(FAKE_SERVER)
        main.chmod(0o755)
        (package / "model.pex" / "manifest.json").write_text(json.dumps({"name": name, "version": version}))
        os.link(SERVER_PEX.resolve(), package / "server.pex")
    digest = "sha256:" + hashlib.sha256(f"{name}{version}{next(_digests)}{tmp_path}".encode()).hexdigest()
    settings = ModelSettings(name=name, version=version, compute="local", env={"FAKE_ID": digest[7:19], **env})
    return Release(settings, package, digest)


def deploy(release: Release, environment: Environment, dry_run: bool = False) -> Tuple[bool, str]:
    out = io.StringIO()
    changed = execute(local.plan(release, environment, GATEWAY_PEX), dry_run=dry_run, say=lambda line: print(line, file=out))
    return changed, out.getvalue()


def call(environment: Environment, path: str, host: str = "fake.ml.localhost", method: str = "POST",
         timeout: float = 10) -> Tuple[int, Dict[str, str], Any]:
    connection = http.client.HTTPConnection("127.0.0.1", environment.gateway_port, timeout=timeout)
    try:
        connection.request(method, path, body=b"{}" if method == "POST" else None,
                           headers={"host": f"{host}:{environment.gateway_port}", "content-type": "application/json"})
        response = connection.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, json.loads(body)
    finally:
        connection.close()


def live(environment: Environment) -> Dict[str, Deployment]:
    return Site(environment).read().deployments


def actions(plan: Plan) -> List[Tuple[str, str]]:
    return [(step.action, step.resource.split(" ")[0]) for step in plan.steps]


# ----------------------------------------------------------------------------------------------


def test_first_deploy_starts_the_gateway_and_routes_by_host(environment: Environment, tmp_path: Path) -> None:
    release = fake_release(tmp_path)
    plan = local.plan(release, environment, GATEWAY_PEX)
    assert actions(plan) == [(CREATE, "gateway"), (CREATE, "release"), (CREATE, "backend"), (CREATE, "route")]
    assert plan.url == f"http://fake.ml.localhost:{environment.gateway_port}/v1/"
    assert plan.serving.startswith("nothing")
    changed, out = deploy(release, environment)
    assert changed and f"deployed {release.digest}: {plan.url}" in out

    status, headers, body = call(environment, "/v1/predict")
    assert status == 200 and body["id"] == release.settings.env["FAKE_ID"]
    assert headers["x-ml-digest"] == release.digest
    # The backend runs from the state directory's copy, not from the (temporary) package.
    (deployment,) = live(environment).values()
    copy = Site(environment).root / deployment.release_dir
    assert (copy / "model.pex" / "__main__.py").exists() and (copy / "server.pex").exists()
    assert Path(f"/proc/{deployment.pid}/cwd").resolve() == copy
    text = local.status(environment)
    assert plan.url in text and "ready" in text and f"pid {deployment.pid}" in text


def test_deploying_what_is_live_changes_nothing(environment: Environment, tmp_path: Path) -> None:
    release = fake_release(tmp_path)
    deploy(release, environment)
    before = live(environment)
    plan = local.plan(release, environment, GATEWAY_PEX)
    assert [s.action for s in plan.steps] == [UNCHANGED] * 4
    changed, out = deploy(release, environment)
    assert not changed and "already live, no change" in out and plan.url in out
    assert live(environment) == before


def test_a_dry_run_changes_nothing(environment: Environment, tmp_path: Path) -> None:
    site = Site(environment)
    # Nothing deployed yet: not even the state directory is created.
    changed, out = deploy(fake_release(tmp_path), environment, dry_run=True)
    assert not changed and "plan (dry run, nothing was changed)" in out and "create    gateway" in out
    assert not site.root.exists()

    release = fake_release(tmp_path)
    deploy(release, environment)
    files = {p: p.read_bytes() for p in site.root.rglob("*.json")}
    processes = marked_processes(site)
    changed, out = deploy(fake_release(tmp_path), environment, dry_run=True)
    assert not changed and "replace   backend fake v1" in out and "delete    backend fake v1" in out
    assert {p: p.read_bytes() for p in site.root.rglob("*.json")} == files
    assert marked_processes(site) == processes
    assert call(environment, "/v1/predict")[2]["id"] == release.settings.env["FAKE_ID"]


def test_a_redeploy_under_load_fails_no_request(environment: Environment, tmp_path: Path) -> None:
    first, second = fake_release(tmp_path), fake_release(tmp_path)
    deploy(first, environment)
    old = live(environment)["fake-v1"]
    with steady_load(environment.gateway_port, "/v1/predict", b"{}", {"host": "fake.ml.localhost"},
                     timeout=10) as load:
        plan = local.plan(second, environment, GATEWAY_PEX)
        assert actions(plan) == [(UNCHANGED, "gateway"), (CREATE, "release"), (REPLACE, "backend"),
                                 (UPDATE, "route"), (DELETE, "backend")]
        execute(plan, say=lambda _: None)
    assert load.failures == []
    seen = Counter(json.loads(body)["id"] for status, _, body in load.answers if status == 200)
    assert seen.get(first.settings.env["FAKE_ID"], 0) > 0 and seen.get(second.settings.env["FAKE_ID"], 0) > 0
    assert call(environment, "/v1/predict")[2]["id"] == second.settings.env["FAKE_ID"]
    assert not backends.of(old).alive(old)


def test_a_release_that_fails_to_start_leaves_the_previous_one_serving(
        environment: Environment, tmp_path: Path) -> None:
    good = fake_release(tmp_path)
    deploy(good, environment)
    before = live(environment)
    with pytest.raises(DeployFailed) as failed:
        deploy(fake_release(tmp_path, FAKE_FAIL="1"), environment)
    message = str(failed.value)
    assert "replace backend fake v1" in message and "exited with code 3 before it was ready" in message
    assert "fake: the model could not be loaded" in message  # the end of its log
    assert f"left in place: {before['fake-v1'].describe()}" in message and "keeps serving" in message
    assert live(environment) == before
    assert call(environment, "/v1/predict")[2]["id"] == good.settings.env["FAKE_ID"]

    hanging = fake_release(tmp_path, FAKE_HANG="1")
    hanging = dataclasses.replace(hanging, settings=dataclasses.replace(hanging.settings, load_timeout=1))
    with pytest.raises(DeployFailed, match=r"was not ready within 1 s \(its `load_timeout`\)"):
        deploy(hanging, environment)
    assert live(environment) == before
    # Only the good backend (and the gateway) run.
    groups = {os.getpgid(pid) for pid in marked_processes(Site(environment))}
    assert groups == {before["fake-v1"].pid, gateway_state(Site(environment)).pid}


def test_two_versions_live_side_by_side(environment: Environment, tmp_path: Path) -> None:
    v1, v2 = fake_release(tmp_path, version=1), fake_release(tmp_path, version=2)
    deploy(v1, environment)
    deploy(v2, environment)
    assert call(environment, "/v1/predict")[2]["version"] == 1
    assert call(environment, "/v2/predict")[2]["version"] == 2
    # Paths without a version go to the highest one; OIP paths name theirs.
    assert call(environment, "/v2/health/ready", method="GET")[1]["x-ml-digest"] == v2.digest
    assert call(environment, "/v2/models/fake/versions/1/ready", method="GET")[1]["x-ml-digest"] == v1.digest
    status, _, body = call(environment, "/v3/predict")
    assert status == 404 and "fake has no version 3 deployed (live: v1, v2)" in body["error"]
    assert body["routed"] == [f"http://fake.ml.localhost:{environment.gateway_port}/v{n}/" for n in (1, 2)]
    # Redeploying v1 leaves v2 alone.
    v2_pid = live(environment)["fake-v2"].pid
    deploy(fake_release(tmp_path, version=1), environment)
    assert live(environment)["fake-v2"].pid == v2_pid


def test_what_died_is_started_again(environment: Environment, tmp_path: Path) -> None:
    release = fake_release(tmp_path)
    deploy(release, environment)
    site = Site(environment)
    os.killpg(live(environment)["fake-v1"].pid, signal.SIGKILL)
    plan = local.plan(release, environment, GATEWAY_PEX)
    assert plan.serving.startswith("nothing healthy")
    assert [a for a, _ in actions(plan)] == [UNCHANGED, UNCHANGED, REPLACE, UPDATE, DELETE]
    deploy(release, environment)
    assert call(environment, "/v1/predict")[0] == 200

    os.kill(gateway_state(site).pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while gateway_state(site).alive:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    plan = local.plan(release, environment, GATEWAY_PEX)
    assert [a for a, _ in actions(plan)] == [CREATE, UNCHANGED, UNCHANGED, UNCHANGED]
    deploy(release, environment)
    assert call(environment, "/v1/predict")[0] == 200


def test_rollback_serves_the_previous_release_again(environment: Environment, tmp_path: Path) -> None:
    first, second = fake_release(tmp_path), fake_release(tmp_path)
    deploy(first, environment)
    deploy(second, environment)
    plan = local.plan_rollback("fake", 1, environment)
    assert plan.digest == first.digest
    execute(plan, say=lambda _: None)
    assert call(environment, "/v1/predict")[2]["id"] == first.settings.env["FAKE_ID"]
    with pytest.raises(ConfigError, match="fake v7 has no earlier release"):
        local.plan_rollback("fake", 7, environment)


def test_stop_one_model_then_everything(environment: Environment, tmp_path: Path) -> None:
    deploy(fake_release(tmp_path), environment)
    deploy(fake_release(tmp_path, name="other"), environment)
    said: List[str] = []
    local.stop(environment, model="fake", say=said.append)
    assert len(said) == 1 and said[0].startswith("stopped fake v1")
    assert list(live(environment)) == ["other-v1"]
    assert call(environment, "/v1/predict", host="other.ml.localhost")[0] == 200
    assert call(environment, "/v1/predict")[0] == 404
    local.stop(environment, say=said.append)
    assert said[-1].startswith("stopped the gateway")
    assert "gateway http://127.0.0.1:%d: not running" % environment.gateway_port in local.status(environment)
    assert marked_processes(Site(environment)) == {}


def test_stop_also_ends_what_a_crashed_deploy_left(environment: Environment, tmp_path: Path) -> None:
    site = Site(environment)
    release = fake_release(tmp_path)
    stray = subprocess.Popen(
        [str(release.package_dir / "model.pex" / "__main__.py"), "serve", "--ready-file", str(tmp_path / "url")],
        env=child_env(site, "fake-v1", {}), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not (tmp_path / "url").exists():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert f"stray process group {stray.pid} (fake-v1)" in local.status(environment)
    said: List[str] = []
    local.stop(environment, say=said.append)
    assert stray.wait(timeout=10) == 0
    assert any(f"stray process group {stray.pid}" in line for line in said)


def test_a_port_taken_by_another_program_is_a_clear_error(environment: Environment, tmp_path: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", environment.gateway_port))
        other.listen()
        threading.Thread(target=lambda: other.accept()[0].sendall(b"SSH-2.0-not-http\r\n"), daemon=True).start()
        with pytest.raises(ConfigError, match=f"127.0.0.1:{environment.gateway_port} is taken by a program"):
            local.plan(fake_release(tmp_path), environment, GATEWAY_PEX)


def test_engine_docker_without_an_engine_is_a_clear_error(environment: Environment, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    docker_env = dataclasses.replace(environment, engine="docker")
    with pytest.raises(ConfigError, match="has engine: docker, but No Docker-API engine is reachable"):
        local.plan(fake_release(tmp_path), docker_env, GATEWAY_PEX)
    # `auto` falls back to running the packaged server, and says so.
    plan = local.plan(fake_release(tmp_path), dataclasses.replace(environment, engine="auto"), GATEWAY_PEX)
    assert "no container engine answered" in plan.steps[2].detail


def test_a_running_gateway_is_kept_and_an_older_build_of_it_is_pointed_out(
        environment: Environment, tmp_path: Path) -> None:
    deploy(fake_release(tmp_path), environment)
    newer = tmp_path / "newer" / "gateway.pex"
    newer.parent.mkdir()
    newer.write_bytes(GATEWAY_PEX.read_bytes() + b"\n# another build\n")
    gateway = local.plan(fake_release(tmp_path, name="newer"), environment, newer).steps[0]
    assert gateway.action == UNCHANGED and "runs an older gateway.pex than this deploy's" in gateway.detail
    assert "older" not in local.plan(fake_release(tmp_path), environment, GATEWAY_PEX).steps[0].detail


def test_a_rollback_restarts_the_gateway_from_the_kept_copy(environment: Environment, tmp_path: Path) -> None:
    deploy(fake_release(tmp_path), environment)
    deploy(fake_release(tmp_path), environment)
    site = Site(environment)
    os.kill(gateway_state(site).pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while gateway_state(site).alive:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    plan = local.plan_rollback("fake", 1, environment)  # handed no gateway.pex
    assert plan.steps[0].action == CREATE and "gateway.pex" in plan.steps[0].detail
    execute(plan, say=lambda _: None)
    assert call(environment, "/v1/predict")[0] == 200


def test_no_gateway_to_start_is_a_clear_error(environment: Environment, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no gateway to start in environment 'test'"):
        local.plan(fake_release(tmp_path), environment)
