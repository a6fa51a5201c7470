"""`local` deploys of the real packaged iris model, end to end: the gateway (its own
gateway.pex), backends run as processes from copies in the state directory, real HTTP through
the gateway by host name; and the same through podman's Docker API, the image streamed from its layout.

Other releases are made from the one package (models.iris/iris):
- another digest of the same files (a redeploy that changes nothing in the model);
- version 2: a copy whose generated manifest says `version: 2`;
- a broken one: a copy whose artifact is garbage, so the model fails to load.
A modified copy gets new PEX hashes, or PEX would run the code it unpacked for the original.
"""

from __future__ import annotations

import base64
import dataclasses
import gzip
import hashlib
import http.client
import io
import json
import os
import re
import shutil
import signal
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

from ml_deploy import local
from ml_deploy.local.processes import marked_processes
from ml_deploy.local.state import Site
from ml_deploy.config import Environment
from ml_deploy.plan import UNCHANGED, DeployFailed, execute
from ml_deploy.release import Release
from ml_image.registry import read_layout
from testutil.load import steady_load, teardown_on_sigterm
from testutil.podman import podman_service, podman_store
from testutil.net import free_port

PACKAGE = Path("models.iris/iris")
GATEWAY_PEX = Path("gateway.pex")  # //platform:gateway
FLOWER = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


def variant(destination: Path, *, version: Optional[int] = None, broken: bool = False) -> Path:
    """A copy of the iris package with its model version or its artifact changed."""
    shutil.copytree(PACKAGE / "model.pex", destination / "model.pex", symlinks=True)
    shutil.copy2(PACKAGE / "server.pex", destination / "server.pex")
    pex = destination / "model.pex"
    changed = []
    if version is not None:
        main = pex / "__ml_model_main__.py"
        main.write_text(re.sub(r"'version': \d+", f"'version': {version}", main.read_text()))
        changed.append(main.read_bytes())
    if broken:
        for artifact in (pex / "artifacts").iterdir():
            artifact.write_bytes(b"not a model")
            changed.append(artifact.read_bytes())
    # PEX caches a packed PEX's code by these hashes: new content needs new ones.
    info = json.loads((pex / "PEX-INFO").read_text())
    bootstrap = (pex / "__main__.py").read_text()
    salt = hashlib.sha256(b"".join(changed)).hexdigest()
    for key in ("pex_hash", "code_hash"):
        new = hashlib.sha1(f"{info[key]}{salt}".encode()).hexdigest()
        bootstrap = bootstrap.replace(info[key], new)
        info[key] = new
    (pex / "PEX-INFO").write_text(json.dumps(info))
    (pex / "__main__.py").write_text(bootstrap)
    return destination


def other_digest(release: Release, label: str) -> str:
    return "sha256:" + hashlib.sha256(f"{release.digest}{label}".encode()).hexdigest()


def deploy(release: Release, environment: Environment) -> str:
    out = io.StringIO()
    execute(local.plan(release, environment, GATEWAY_PEX), say=lambda line: print(line, file=out))
    print(out.getvalue())
    return out.getvalue()


def iris_headers(environment: Environment) -> Dict[str, str]:
    return {"host": f"iris.ml.localhost:{environment.gateway_port}", "content-type": "application/json"}


def predict(environment: Environment, version: int = 1, path: Optional[str] = None) -> Tuple[int, str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", environment.gateway_port, timeout=30)
    try:
        conn.request("POST", path or f"/v{version}/predict", body=json.dumps({"flowers": [FLOWER]}),
                     headers=iris_headers(environment))
        response = conn.getresponse()
        body = response.read()
        return response.status, response.getheader("x-ml-digest", ""), json.loads(body)
    finally:
        conn.close()


def get(environment: Environment, path: str) -> Tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", environment.gateway_port, timeout=30)
    try:
        conn.request("GET", path, headers={"host": "iris.ml.localhost"})
        response = conn.getresponse()
        response.read()
        return response.status, response.getheader("x-ml-digest", "")
    finally:
        conn.close()


def leftovers(environment: Environment) -> Dict[int, str]:
    return marked_processes(Site(environment))


def stop_everything(environment: Environment) -> Dict[int, str]:
    """Stop what `environment` runs; the processes the stop left behind, killed now."""
    local.stop(environment, say=lambda _: None)
    left = leftovers(environment)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    return left


@pytest.fixture(scope="module")
def iris() -> Release:
    return Release.from_spec({"name": "iris", "version": 1, "address": "models/iris:iris"}, PACKAGE.resolve())


@pytest.fixture(scope="module")
def environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Environment]:
    teardown_on_sigterm()
    root = tmp_path_factory.mktemp("local")
    env = Environment(name="it", compute="local", gateway_port=free_port(), state_dir=str(root / "state"),
                      engine="process")
    yield env
    left = stop_everything(env)
    assert not left, f"processes left running after stop: {left}"


@pytest.fixture
def live_iris(environment: Environment, iris: Release) -> Release:
    """Some iris v1 release is live (the first test's, or whatever a later one left)."""
    if not any(d["name"] == "iris" and d["version"] == 1 for d in local.deployments(environment)):
        deploy(iris, environment)
    (current,) = [d for d in local.deployments(environment) if d["version"] == 1]
    return dataclasses.replace(iris, digest=current["digest"])


def test_deploy_then_predict_through_the_gateway(environment: Environment, iris: Release) -> None:
    out = deploy(iris, environment)
    url = f"http://iris.ml.localhost:{environment.gateway_port}/v1/"
    assert f"deployed {iris.digest}: {url}" in out
    status, digest, body = predict(environment)
    assert status == 200 and body[0]["species"] == "setosa" and digest == iris.digest
    text = local.status(environment)
    assert url in text and "ready" in text and iris.short_digest in text
    # It runs from the state directory's copy, not from the package the deploy was given.
    (deployment,) = Site(environment).read().deployments.values()
    assert Path(f"/proc/{deployment.pid}/cwd").resolve() == Site(environment).root / deployment.release_dir


def test_the_same_digest_again_is_no_change(environment: Environment, live_iris: Release) -> None:
    before = local.deployments(environment)
    plan = local.plan(live_iris, environment, GATEWAY_PEX)
    assert {s.action for s in plan.steps} == {UNCHANGED}
    assert "already live, no change" in deploy(live_iris, environment)
    assert local.deployments(environment) == before


def test_a_redeploy_under_load_drops_no_request(environment: Environment, live_iris: Release) -> None:
    # The same files under another digest: the driver copies them to a release folder of its own.
    new = dataclasses.replace(live_iris, digest=other_digest(live_iris, "redeploy"))
    with steady_load(environment.gateway_port, "/v1/predict", json.dumps({"flowers": [FLOWER]}).encode(),
                     iris_headers(environment), settle=1) as load:
        started = time.monotonic()
        deploy(new, environment)
        took = time.monotonic() - started
    digests = [headers.get("x-ml-digest", "") for _, headers, _ in load.answers]
    print(f"{len(digests)} requests during the redeploy ({took:.1f} s); failed: {len(load.failures)}")
    assert load.failures == []
    assert live_iris.digest in digests and new.digest in digests
    assert digests[-1] == new.digest and predict(environment)[1] == new.digest
    assert [d["digest"] for d in local.deployments(environment)] == [new.digest]


def test_v1_and_v2_side_by_side(environment: Environment, live_iris: Release, tmp_path: Path) -> None:
    v2 = Release(dataclasses.replace(live_iris.settings, version=2), variant(tmp_path / "v2", version=2),
                 other_digest(live_iris, "v2"))
    deploy(v2, environment)
    status, digest, body = predict(environment, version=2)
    assert status == 200 and digest == v2.digest and body[0]["species"] == "setosa"
    assert predict(environment, version=1)[1] == live_iris.digest
    assert get(environment, "/v2/models/iris/versions/1/ready")[1] == live_iris.digest
    assert get(environment, "/v2/health/ready")[1] == v2.digest  # the highest version
    assert [(d["version"], d["digest"]) for d in local.deployments(environment)] == [
        (1, live_iris.digest), (2, v2.digest)]
    said: List[str] = []
    local.stop(environment, model="iris", version=2, say=said.append)
    assert len(said) == 1 and said[0].startswith(f"stopped iris v2 {v2.short_digest}")
    assert predict(environment, version=2)[0] == 404


def test_a_broken_release_leaves_the_previous_one_serving(environment: Environment, live_iris: Release,
                                                          tmp_path: Path) -> None:
    broken = dataclasses.replace(live_iris, package_dir=variant(tmp_path / "broken", broken=True),
                                 digest=other_digest(live_iris, "broken"))
    with pytest.raises(DeployFailed) as failed:
        deploy(broken, environment)
    message = str(failed.value)
    print(message)
    assert "exited with code 1 before it was ready" in message and "could not be loaded" in message
    assert f"left in place: iris v1 {live_iris.short_digest}" in message and "keeps serving" in message
    status, digest, body = predict(environment)
    assert status == 200 and digest == live_iris.digest
    assert [d["digest"] for d in local.deployments(environment)] == [live_iris.digest]


# ----------------------------------------------------------------------------------------------
# Through a Docker-API engine


@pytest.fixture
def podman_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """podman's Docker-compatible API on a private socket, for the length of one test."""
    with podman_store() as podman, podman_service(podman) as docker_host:
        monkeypatch.setenv("DOCKER_HOST", docker_host)
        yield podman


def test_the_image_through_a_docker_api_engine(podman_api: Any, iris: Release,
                                               tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("engine")
    environment = Environment(name="it-engine", compute="local", gateway_port=free_port(),
                              state_dir=str(root / "state"), engine="docker")
    try:
        out = deploy(iris, environment)
        assert "create    image" in out and "(container)" in out
        status, digest, body = predict(environment)
        assert status == 200 and digest == iris.digest and body[0]["species"] == "setosa"
        (first,) = Site(environment).read().deployments.values()
        assert first.kind == "container" and podman_api("ps", "-q").stdout.split() == [first.container[:12]]

        # A redeploy: the image is already there; the new container replaces the old one.
        new = dataclasses.replace(iris, digest=other_digest(iris, "engine"))
        plan = local.plan(new, environment, GATEWAY_PEX)
        assert [(s.action, s.resource.split()[0]) for s in plan.steps] == [
            ("unchanged", "gateway"), ("unchanged", "image"), ("replace", "backend"), ("update", "route"),
            ("delete", "backend")]
        execute(plan)
        assert predict(environment)[1] == new.digest
        (second,) = Site(environment).read().deployments.values()
        assert podman_api("ps", "-aq").stdout.split() == [second.container[:12]]
        assert "container" in local.status(environment)
    finally:
        local.stop(environment)
    assert podman_api("ps", "-aq").stdout.split() == []
    assert leftovers(environment) == {}


# ---------------------------------------------------------------------------------------------
# The torch models, deployed locally once (in an environment of their own)


def post(environment: Environment, model: str, body: dict, path: str = "/v1/predict") -> Tuple[int, str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", environment.gateway_port, timeout=120)
    try:
        conn.request("POST", path, body=json.dumps(body),
                     headers={"host": f"{model.replace('_', '-')}.ml.localhost:{environment.gateway_port}",
                              "content-type": "application/json"})
        response = conn.getresponse()
        return response.status, response.getheader("x-ml-digest", ""), json.loads(response.read())
    finally:
        conn.close()


def test_the_torch_models_deploy_and_answer_by_name(tmp_path: Path) -> None:
    teardown_on_sigterm()
    environment = Environment(name="torch", compute="local", gateway_port=free_port(),
                              state_dir=str(tmp_path / "state"), engine="process")
    releases = {name: Release.from_spec({"name": name, "version": 1, "address": f"models/{name}:{name}"},
                                        Path(f"models.{name}/{name}").resolve())
                for name in ("doc_links", "mask2former", "mask_rcnn")}
    try:
        for release in releases.values():
            deploy(release, environment)
        status, digest, links = post(environment, "doc_links",
                                     {"question": "How can I go back to the previous version after a bad release?"})
        assert status == 200 and digest == releases["doc_links"].digest
        assert links[0]["url"].endswith("/deploy/rollback")
        image = base64.b64encode((Path(__file__).parent / "images" / "scene.png").read_bytes()).decode()
        for vision_model in ("mask2former", "mask_rcnn"):
            status, digest, answer = post(environment, vision_model, {"image": image, "threshold": 0.0})
            assert status == 200 and digest == releases[vision_model].digest
            assert (answer["width"], answer["height"]) == (320, 240) and answer["segments"]
    finally:
        left = stop_everything(environment)
    assert not left, f"processes left running after stop: {left}"


def test_segment_anything_client_session_through_the_gateway(tmp_path: Path) -> None:
    """An interactive client's session: the image embedded once, then many clicks, each a real
    HTTP request through the gateway on one kept-alive connection, each answered from the
    server's embedding cache."""
    teardown_on_sigterm()
    environment = Environment(name="sam", compute="local", gateway_port=free_port(),
                              state_dir=str(tmp_path / "state"), engine="process")
    release = Release.from_spec(
        {"name": "segment_anything", "version": 1, "address": "models/segment_anything:segment_anything",
         "compute": "ecs", "gpu": 1, "cpu": 2, "memory": 4096, "load_timeout": 300,
         "env": {"ML_SHARED_CACHE_BYTES": str(128 * 2**20)}},
        Path("models.segment_anything/segment_anything").resolve()).placed("local")
    host = f"segment-anything.ml.localhost:{environment.gateway_port}"
    conn = http.client.HTTPConnection("127.0.0.1", environment.gateway_port, timeout=180)

    def call(method: str, path: str, body: bytes = b"", content_type: str = "application/json") -> Tuple[int, str, bytes]:
        conn.request(method, path, body=body, headers={"host": host, "content-type": content_type})
        response = conn.getresponse()
        return response.status, response.getheader("x-ml-digest", ""), response.read()

    def metric(name: str) -> float:
        _, _, text = call("GET", "/metrics")
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.decode().splitlines() if line.startswith(name + "{"))

    try:
        deploy(release, environment)
        status, digest, body = call("POST", "/v1/embed", (Path(__file__).parent / "images" / "shapes.png").read_bytes(),
                                    "image/png")
        assert status == 200 and digest == release.digest, body
        embedded = json.loads(body)
        assert (embedded["width"], embedded["height"]) == (320, 240) and not embedded["cached"]
        clicks = [(40 + 13 * i, 60 + 6 * i) for i in range(20)]
        logits_id = ""
        for x, y in clicks:
            prompt = {"embedding_id": embedded["embedding_id"], "points": [{"x": x, "y": y}], "multimask": False}
            if logits_id:  # each click refines the previous mask, as an interactive client does
                prompt["mask_input_id"] = logits_id
            status, _, body = call("POST", "/v1/segment", json.dumps(prompt).encode())
            assert status == 200, body
            answer = json.loads(body)
            assert answer["segments"][0]["mask"]["size"] == [240, 320]
            logits_id = answer["logits_id"]
        # One miss (the embedding), and every click a hit on it and on the previous logits.
        assert metric("ml_shared_cache_misses_total") == 1
        assert metric("ml_shared_cache_hits_total") >= 2 * len(clicks) - 1
    finally:
        conn.close()
        left = stop_everything(environment)
    assert not left, f"processes left running after stop: {left}"


def test_support_reply_calls_smollm2_through_the_gateway_with_its_secret(tmp_path: Path, monkeypatch) -> None:
    """The prompt-engineering chain on the local default: support_reply (its API key a secret
    from this deploy's environment) -> the gateway, by smollm2's namespace URL -> smollm2."""
    teardown_on_sigterm()
    key = "sk-local-" + hashlib.sha256(str(tmp_path).encode()).hexdigest()[:16]
    environment = Environment(name="chain", compute="local", gateway_port=free_port(),
                              state_dir=str(tmp_path / "state"), engine="process",
                              secrets={"SUPPORT_REPLY_API_KEY": "env:TEST_SUPPORT_REPLY_KEY"})
    smollm2 = Release.from_spec({"name": "smollm2", "version": 1, "address": "models/smollm2:smollm2", "cpu": 1,
                                 "memory": 2048, "workers": 1, "timeout": 300},
                                Path("models.smollm2/smollm2").resolve())
    support_reply = Release.from_spec(
        {"name": "support_reply", "version": 1, "address": "models/support_reply:support_reply", "compute": "lambda",
         "memory": 512, "timeout": 45, "secrets": ["SUPPORT_REPLY_API_KEY"]},
        Path("models.support_reply/support_reply").resolve()).placed("local")
    ticket = {"subject": "Refund", "message": "I was charged twice for order 123.", "max_tokens": 40}
    output = ""
    try:
        # Without the secret the deploy fails, naming it and where it looked.
        with pytest.raises(Exception, match="secret SUPPORT_REPLY_API_KEY: the environment variable "
                                            "TEST_SUPPORT_REPLY_KEY is not set"):
            deploy(support_reply, environment)
        monkeypatch.setenv("TEST_SUPPORT_REPLY_KEY", key)
        output = deploy(smollm2, environment) + deploy(support_reply, environment)
        status, digest, reply = post(environment, "support_reply", ticket, "/v1/reply")
        assert status == 200 and digest == support_reply.digest, reply
        assert reply["model"] == "smollm2" and reply["text"] and 0 < reply["completion_tokens"] <= 40
        # With smollm2 gone, the gateway has no route for it: a clear 502 naming its 404.
        local.stop(environment, "smollm2", say=lambda _: None)
        status, _, error = post(environment, "support_reply", ticket, "/v1/reply")
        assert status == 502 and error["upstream_status"] == 404 and "smollm2.ml.localhost" in error["detail"]
        conn = http.client.HTTPConnection("127.0.0.1", environment.gateway_port, timeout=30)
        conn.request("GET", "/metrics", headers={"host": f"support-reply.ml.localhost:{environment.gateway_port}"})
        metrics = conn.getresponse().read().decode()
        conn.close()
    finally:
        left = stop_everything(environment)
    assert not left, f"processes left running after stop: {left}"
    # The key reached the model, and nothing else: not the plan, the metrics, any state file
    # (support_reply's release copy whole, the others' small files), nor any layer or the config
    # of its image.
    assert key not in output and key not in metrics
    for path in (tmp_path / "state").rglob("*"):
        if path.is_file() and (path.stat().st_size < 2**20 or "support_reply" in str(path)):
            assert key.encode() not in path.read_bytes(), path
    layout = support_reply.package_dir / "image"
    image = read_layout(layout)
    for blob in image.blobs:
        data = (layout / "blobs" / "sha256" / blob.digest.split(":", 1)[1]).read_bytes()
        assert key.encode() not in (gzip.decompress(data) if "gzip" in blob.media_type else data), blob.digest


def test_the_r_and_tensorflow_models_deploy_and_answer_by_name(tmp_path: Path) -> None:
    """The R model's workers are R processes (this machine's R, the packages of its lock) behind
    the same server and gateway as every Python model; TensorFlow loads once per worker."""
    teardown_on_sigterm()
    environment = Environment(name="runtimes", compute="local", gateway_port=free_port(),
                              state_dir=str(tmp_path / "state"), engine="process")
    releases = {name: Release.from_spec({"name": name, "version": 1, "address": f"models/{name}:{name}"},
                                        Path(f"models.{name}/{name}").resolve())
                for name in ("iris_forest", "tabular_tf")}
    bodies = {"iris_forest": "flowers", "tabular_tf": "wines"}
    try:
        for name, release in releases.items():
            deploy(release, environment)
            examples = json.loads(Path(f"models/{name}/src/examples.json").read_text())
            status, digest, answers = post(environment, name, {bodies[name]: examples["inputs"]})
            assert status == 200 and digest == release.digest
            key = "species" if name == "iris_forest" else "cultivar"
            correct = sum(a[key] == label for a, label in zip(answers, examples["labels"]))
            assert correct >= 0.9 * len(examples["labels"]), (name, correct)
    finally:
        left = stop_everything(environment)
    assert not left, f"processes left running after stop: {left}"
