"""The packaged mask_rcnn (the CUDA torch build, `gpu = 1`) deployed to its declared compute,
`ecs` (ECS on EC2), end to end with no AWS account: moto records the cluster, the task definition
and the service (it runs no task: AWS cannot run here), a real docker-registry (authenticated with
the token moto's ECR hands out) receives the multi-gigabyte image, and podman then runs exactly
the image and environment the task definition names, on this CPU-only host, and answers an image.
"""

from __future__ import annotations

import base64
import json
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from ml_deploy import aws, drivers
from ml_deploy.config import Environment
from ml_deploy.plan import execute
from ml_deploy.release import Release
from ml_image.engine import wait_for_200
from testutil.aws import ECR_TOKEN_CREDENTIALS, REGION, MotoServer, moto_server, with_load_balancer
from testutil.net import free_port
from testutil.podman import podman_store
from testutil.registry import REGISTRY_PACKAGES, require_tool, start_registry

PACKAGE = Path("models.mask_rcnn/mask_rcnn")  # put here by runtime_package_dependencies
IMAGE = Path(__file__).parent / "images" / "scene.jpg"
# What `pants deploy` hands the deploy tool for models/mask_rcnn:mask_rcnn (its BUILD settings).
SPEC = {"name": "mask_rcnn", "version": 1, "address": "models/mask_rcnn:mask_rcnn", "compute": "ecs",
        "gpu": 1, "cpu": 2, "memory": 4096}
START_TIMEOUT = 300  # the CUDA build of torch imports slowly on a busy 2-core host


@pytest.fixture
def moto(tmp_path: Path) -> Iterator[MotoServer]:
    (tmp_path / "moto").mkdir()
    yield from moto_server(tmp_path / "moto")


def test_mask_rcnn_deploys_to_ecs_on_ec2_and_its_image_answers(moto: MotoServer, tmp_path: Path) -> None:
    assert (PACKAGE / "image" / "index.json").is_file(), \
        f"{PACKAGE}/image is missing: the test needs runtime_package_dependencies=['models/mask_rcnn:mask_rcnn']"
    require_tool("podman", "podman runc")
    require_tool("docker-registry", REGISTRY_PACKAGES)
    username, password = ECR_TOKEN_CREDENTIALS
    with start_registry(tmp_path / "registry", username=username, password=password) as registry:
        environment = with_load_balancer(Environment(
            name="integration", region=REGION, endpoint_url=moto.endpoint, registry=registry.host,
            registry_auth="ecr", log_retention_days=7))
        release = Release.from_spec(SPEC, PACKAGE)
        output: list = []
        assert execute(drivers.plan_deploy(release, environment), say=output.append), "\n".join(output)

        ecs = aws.client(environment, "ecs")
        (service,) = ecs.describe_services(cluster=environment.cluster, services=[release.resource_name])["services"]
        assert service["launchType"] == "EC2"
        definition = ecs.describe_task_definition(taskDefinition=service["taskDefinition"])["taskDefinition"]
        assert (definition["cpu"], definition["memory"]) == ("2048", "4096")
        (container,) = definition["containerDefinitions"]
        assert container["resourceRequirements"] == [{"type": "GPU", "value": "1"}]
        image_uri = container["image"]
        assert image_uri == f"{registry.host}/ml/mask_rcnn@{release.digest}", image_uri
        task_env = {e["name"]: e["value"] for e in container.get("environment", [])}

        with podman_store() as podman:
            # Exactly what the task names, by digest, with the registry's (ECR token) credentials.
            podman("pull", "--tls-verify=false", "--creds", f"{username}:{password}", image_uri)
            port = free_port()
            env_flags = [f for k, v in {**task_env, "ML_PORT": str(port), "ML_HOST": "127.0.0.1"}.items()
                         for f in ("-e", f"{k}={v}")]
            running = podman("run", "-d", *env_flags, image_uri).stdout.strip()
            try:
                url = f"http://127.0.0.1:{port}"
                assert wait_for_200(f"{url}/v2/health/ready", START_TIMEOUT), \
                    podman("logs", running, check=False).stderr[-5000:]
                body = json.dumps({"image": base64.b64encode(IMAGE.read_bytes()).decode(), "threshold": 0.0})
                request = urllib.request.Request(f"{url}/v1/predict", data=body.encode(),
                                                 headers={"content-type": "application/json"})
                with urllib.request.urlopen(request, timeout=120) as response:
                    answer = json.loads(response.read())
                assert (answer["width"], answer["height"]) == (320, 240)
                assert answer["segments"] and all(s["mask"]["size"] == [240, 320] for s in answer["segments"])
                # No GPU here: the same image runs its one worker on the CPU.
                logs = podman("logs", running, check=False)
                assert "mask_rcnn: serving on cpu" in logs.stdout + logs.stderr
            finally:
                podman("stop", "--time", "20", running, check=False)
