"""Fixtures of the AWS driver tests: moto (AWS, which cannot run here), a real docker-registry
that takes the token moto's ECR hands out, and a deployer of tiny images."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

from ml_deploy import aws
from ml_deploy.config import Environment
from ml_deploy.drivers import plan_deploy
from ml_deploy.plan import Plan, execute
from ml_deploy.release import Release
from testutil.aws import ECR_TOKEN_CREDENTIALS, REGION, MotoServer, moto_server, write_test_image
from testutil.registry import RunningRegistry, start_registry
from testutil.strict_aws import StrictAws


@pytest.fixture(scope="module")
def moto(tmp_path_factory) -> Iterator[MotoServer]:
    yield from moto_server(tmp_path_factory.mktemp("moto"))


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Iterator[RunningRegistry]:
    # Plays ECR: it accepts the credentials moto's ecr.get_authorization_token hands out.
    username, password = ECR_TOKEN_CREDENTIALS
    with start_registry(tmp_path_factory.mktemp("registry"), username=username, password=password) as running:
        yield running


@pytest.fixture
def aws_environment(moto: MotoServer, registry: RunningRegistry) -> Iterator[Environment]:
    """An empty moto account with AWS's rules that moto does not keep (testutil.strict_aws)."""
    moto.reset()  # every test starts from an empty account
    environment = Environment(name="test", region=REGION, endpoint_url=moto.endpoint, registry=registry.host,
                              registry_auth="ecr", log_retention_days=7, poll_seconds=0.01, rollout_timeout=30)
    strict = StrictAws(aws.session(environment)).install()
    try:
        yield environment
    finally:
        strict.uninstall()


@pytest.fixture
def strict_aws(aws_environment: Environment) -> StrictAws:
    return StrictAws.on(aws.session(aws_environment))


class Deployer:
    """Releases of one model, each a tiny image of its own, and their deploys (with the driver
    of the spec's compute), keeping what the deploy printed."""

    def __init__(self, root: Path, environment: Environment, spec: Dict[str, Any]) -> None:
        self.root, self.environment, self.spec = root, environment, spec
        self.output: List[str] = []

    def release(self, content: str, **settings: Any) -> Release:
        package = self.root / content
        write_test_image(package / "image", content.encode())
        return Release.from_spec({**self.spec, **settings}, package)

    def plan(self, release: Release) -> Plan:
        return plan_deploy(release, self.environment)

    def deploy(self, release: Release, dry_run: bool = False) -> bool:
        self.output.clear()
        return execute(self.plan(release), dry_run=dry_run, say=self.output.append)

    @property
    def text(self) -> str:
        return "\n".join(self.output)
