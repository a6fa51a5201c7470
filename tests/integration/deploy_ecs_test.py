"""The packaged GPU models (the CUDA torch build, `gpu = 1`), mask_rcnn and segment_anything,
deployed to their declared compute, `ecs` (ECS on EC2), end to end with no AWS account: moto
records the cluster, the task definitions and the services (it runs no task: AWS cannot run
here), a real docker-registry (authenticated with the token moto's ECR hands out) receives the
multi-gigabyte images (the second one mounts the torch layers the first pushed), and podman then
runs exactly the image and environment each task definition names, on this CPU-only host.
"""

from __future__ import annotations

import base64
import contextlib
import json
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from ml_deploy import aws, drivers
from ml_deploy.config import Environment
from ml_deploy.plan import execute
from ml_deploy.release import Release
from ml_image.engine import wait_for_200
from testutil.aws import ECR_TOKEN_CREDENTIALS, REGION, MotoServer, moto_server, with_load_balancer
from testutil.net import free_port
from testutil.podman import podman_store
from testutil.registry import REGISTRY_PACKAGES, RunningRegistry, require_tool, start_registry
from testutil.strict_aws import StrictAws

IMAGES = Path(__file__).parent / "images"
# What `pants deploy` hands the deploy tool for each model (its BUILD settings).
SPECS = {
    "mask_rcnn": {"name": "mask_rcnn", "version": 1, "address": "models/mask_rcnn:mask_rcnn", "compute": "ecs",
                  "gpu": 1, "cpu": 2, "memory": 4096},
    "segment_anything": {"name": "segment_anything", "version": 1, "address": "models/segment_anything:segment_anything",
                         "compute": "ecs", "gpu": 1, "cpu": 2, "memory": 4096, "load_timeout": 300,
                         "env": {"ML_SHARED_CACHE_BYTES": str(128 * 2**20)}},
}
START_TIMEOUT = 300  # the CUDA build of torch imports slowly on a busy 2-core host
USERNAME, PASSWORD = ECR_TOKEN_CREDENTIALS


def package(name: str) -> Path:
    path = Path(f"models.{name}/{name}")  # put here by runtime_package_dependencies
    assert (path / "image" / "index.json").is_file(), \
        f"{path}/image is missing: the test needs runtime_package_dependencies=['models/{name}:{name}']"
    return path


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    require_tool("podman", "podman runc")
    require_tool("docker-registry", REGISTRY_PACKAGES)
    with start_registry(tmp_path_factory.mktemp("registry"), username=USERNAME, password=PASSWORD) as running:
        yield running


@pytest.fixture
def moto(tmp_path: Path) -> Iterator[MotoServer]:
    (tmp_path / "moto").mkdir()
    yield from moto_server(tmp_path / "moto")


@pytest.fixture
def environment(moto: MotoServer, registry: RunningRegistry) -> Iterator[Environment]:
    # AWS's rollout states over moto's (testutil.strict_aws): the deploy waits for COMPLETED.
    environment = Environment(name="integration", region=REGION, endpoint_url=moto.endpoint, registry=registry.host,
                              registry_auth="ecr", log_retention_days=7, poll_seconds=0.05)
    strict = StrictAws(aws.session(environment)).install()
    try:
        yield with_load_balancer(environment)
    finally:
        strict.uninstall()


def deploy(name: str, environment: Environment) -> tuple[Release, dict, dict]:
    """Deploys the model; its service and its task definition's one container, as ECS reports them."""
    release = Release.from_spec(SPECS[name], package(name))
    output: list = []
    assert execute(drivers.plan_deploy(release, environment), say=output.append), "\n".join(output)
    ecs = aws.client(environment, "ecs")
    (service,) = ecs.describe_services(cluster=environment.cluster, services=[release.resource_name])["services"]
    # Placed by the GPU capacity provider (whose managed scaling starts GPU instances), never by
    # launch type EC2, which capacity providers do not scale for.
    assert service["capacityProviderStrategy"] == [{"capacityProvider": environment.gpu_capacity_provider,
                                                    "weight": 1, "base": 0}]
    definition = ecs.describe_task_definition(taskDefinition=service["taskDefinition"])["taskDefinition"]
    assert (definition["cpu"], definition["memory"]) == ("2048", "4096")
    (container,) = definition["containerDefinitions"]
    assert container["resourceRequirements"] == [{"type": "GPU", "value": "1"}]
    assert container["image"] == f"{environment.registry}/ml/{name}@{release.digest}", container["image"]
    return release, service, container


@contextlib.contextmanager
def running(container: dict) -> Iterator[tuple[str, Callable[[], str]]]:
    """Exactly the image the task names, by digest, with the registry's (ECR token) credentials,
    and its environment, run by podman: its URL and a function reading its log."""
    with podman_store() as podman:
        podman("pull", "--tls-verify=false", "--creds", f"{USERNAME}:{PASSWORD}", container["image"])
        port = free_port()
        task_env = {e["name"]: e["value"] for e in container.get("environment", [])}
        env_flags = [f for k, v in {**task_env, "ML_PORT": str(port), "ML_HOST": "127.0.0.1"}.items()
                     for f in ("-e", f"{k}={v}")]
        started = podman("run", "-d", *env_flags, container["image"]).stdout.strip()

        def logs() -> str:
            result = podman("logs", started, check=False)
            return result.stdout + result.stderr

        try:
            url = f"http://127.0.0.1:{port}"
            assert wait_for_200(f"{url}/v2/health/ready", START_TIMEOUT), logs()[-5000:]
            yield url, logs
        finally:
            podman("stop", "--time", "20", started, check=False)


def post(url: str, body: Any, content_type: str = "application/json") -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"content-type": content_type})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def metric(url: str, name: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as response:
        lines = response.read().decode().splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(name + "{"))


def test_mask_rcnn_deploys_to_ecs_on_ec2_and_its_image_answers(environment: Environment) -> None:
    _, _, container = deploy("mask_rcnn", environment)
    with running(container) as (url, logs):
        image = base64.b64encode((IMAGES / "scene.jpg").read_bytes()).decode()
        answer = post(f"{url}/v1/predict", {"image": image, "threshold": 0.0})
        assert (answer["width"], answer["height"]) == (320, 240)
        assert answer["segments"] and all(s["mask"]["size"] == [240, 320] for s in answer["segments"])
        # No GPU here: the same image runs its one worker on the CPU.
        assert "mask_rcnn: serving on cpu" in logs()


def test_segment_anything_deploys_to_ecs_with_one_worker_for_its_gpu_and_its_load_grace(
        environment: Environment) -> None:
    release, service, container = deploy("segment_anything", environment)
    # moto keeps no grace period (ECS reports it); the plan sends the model's load_timeout,
    # which ecs_test checks call by call.
    assert service.get("healthCheckGracePeriodSeconds", release.settings.load_timeout) == 300
    with running(container) as (url, logs):
        assert metric(url, "ml_workers_ready") == 1  # one GPU: one worker (on the CPU here)
        assert metric(url, "ml_shared_cache_max_bytes") == 128 * 2**20  # the task's environment
        embedded = post(f"{url}/v1/embed", (IMAGES / "shapes.png").read_bytes(), "image/png")
        for x in (60, 90, 120):
            answer = post(f"{url}/v1/segment", {"embedding_id": embedded["embedding_id"], "points": [{"x": x, "y": 120}]})
            assert answer["segments"] and answer["segments"][0]["mask"]["size"] == [240, 320]
        assert metric(url, "ml_shared_cache_misses_total") == 1  # embedded once, every click a hit
        assert "segment_anything: small serving on cpu" in logs()
