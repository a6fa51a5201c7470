"""The packaged iris model deployed to `lambda` end to end, with no AWS account: moto records the
function, a real docker-registry (authenticated with the token moto's ECR hands out) receives
the image, and podman then runs exactly the image the function names, by digest, the way Lambda
would: its entry point talking to a local Lambda Runtime API, fed a Function URL request.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Iterator

import pytest
from fakes.lambda_runtime_api import LambdaRuntimeApi, function_url_event

from ml_deploy import aws, drivers
from ml_deploy.config import Environment
from ml_deploy.plan import execute
from ml_deploy.release import Release
from testutil.aws import ECR_TOKEN_CREDENTIALS, REGION, MotoServer, create_lambda_role, moto_server
from testutil.podman import podman_store
from testutil.registry import REGISTRY_PACKAGES, require_tool, start_registry
from testutil.strict_aws import StrictAws

PACKAGE = Path("models.iris/iris")  # `pants package models/iris:iris`, put here by runtime_package_dependencies
FLOWER = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
# What `pants deploy` hands the deploy tool for models/iris:iris (its own compute is overridden).
SPEC = {"name": "iris", "version": 1, "address": "models/iris:iris", "compute": "local", "memory": 1024,
        "timeout": 60, "env": {"ML_LOG_LEVEL": "INFO"}}
# Lambda's uid for image functions: it ignores the image's USER, so the image must run as anyone.
LAMBDA_USER = "993:990"
START_TIMEOUT = 120


@pytest.fixture
def moto(tmp_path: Path) -> Iterator[MotoServer]:
    (tmp_path / "moto").mkdir()
    yield from moto_server(tmp_path / "moto")


def test_deployed_iris_image_answers_a_function_url_request_as_lambda_runs_it(moto: MotoServer,
                                                                             tmp_path: Path) -> None:
    assert (PACKAGE / "image" / "index.json").is_file(), \
        f"{PACKAGE}/image is missing: the test needs runtime_package_dependencies=['models/iris:iris']"
    require_tool("podman", "podman runc")
    require_tool("docker-registry", REGISTRY_PACKAGES)
    username, password = ECR_TOKEN_CREDENTIALS
    with start_registry(tmp_path / "registry", username=username, password=password) as registry:
        environment = Environment(name="integration", compute="lambda", region=REGION, poll_seconds=0.05,
                                  endpoint_url=moto.endpoint, registry=registry.host, registry_auth="ecr")
        environment = dataclasses.replace(environment, lambda_role=create_lambda_role(aws.session(environment)))
        release = Release.from_spec(SPEC, PACKAGE)

        output: list = []
        # AWS's rules over moto's (testutil.strict_aws): Pending states, ECR pull rights, ...
        strict = StrictAws(aws.session(environment)).install()
        try:
            assert execute(drivers.plan_deploy(release, environment), say=output.append), "\n".join(output)
        finally:
            strict.uninstall()
        lam = aws.client(environment, "lambda")
        live = lam.get_function(FunctionName="ml-iris-v1", Qualifier="live")
        image_uri = live["Code"]["ImageUri"]
        assert image_uri == f"{registry.host}/ml/iris@{release.digest}", image_uri
        configuration = live["Configuration"]
        assert (configuration["PackageType"], configuration["MemorySize"]) == ("Image", 1024)
        url = lam.get_function_url_config(FunctionName="ml-iris-v1", Qualifier="live")["FunctionUrl"]
        assert f"deployed {release.digest}: {url}" in "\n".join(output)

        with podman_store() as podman, LambdaRuntimeApi(function_arn=configuration["FunctionArn"]) as api:
            # Exactly what the function names, by digest, with the registry's (ECR token) credentials.
            podman("pull", "--tls-verify=false", "--creds", f"{username}:{password}", image_uri)
            # What Lambda gives an image function: its variables, the Runtime API, a read-only root
            # file system with a writable /tmp, and a user that is not the image's.
            lambda_env = {
                **configuration.get("Environment", {}).get("Variables", {}),
                "AWS_LAMBDA_RUNTIME_API": api.address,
                "AWS_LAMBDA_FUNCTION_NAME": configuration["FunctionName"],
                "AWS_LAMBDA_FUNCTION_VERSION": configuration["Version"],
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(configuration["MemorySize"]),
                "AWS_REGION": REGION,
            }
            env_flags = [flag for name, value in lambda_env.items() for flag in ("-e", f"{name}={value}")]
            container = podman("run", "-d", "--network=host", "--read-only", "--user", LAMBDA_USER,
                               *env_flags, image_uri).stdout.strip()

            def alive() -> bool:
                state = podman("inspect", "--format", "{{.State.Running}}", container, check=False)
                return state.stdout.strip() == "true"

            def logs() -> str:
                result = podman("logs", container, check=False)
                return (result.stdout + result.stderr)[-5000:]

            try:
                api.wait_for_poll(START_TIMEOUT, alive, logs)  # polling /next: the model is loaded
                event = function_url_event("POST", "/v1/predict", json.dumps({"flowers": [FLOWER]}),
                                           {"content-type": "application/json"}, region=REGION)
                kind, payload, _, request_id = api.invoke(event, 60, alive, logs)
                assert kind == "response", payload
                assert payload["statusCode"] == 200, payload
                assert payload["headers"]["x-request-id"] == request_id
                assert [p["species"] for p in json.loads(payload["body"])] == ["setosa"]
            finally:
                podman("stop", "--time", "10", container, check=False)
