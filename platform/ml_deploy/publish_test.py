"""The registry push step with `registry_auth: ecr`: the token ECR (here moto) hands out is what
the registry is asked with, against a real docker-registry whose htpasswd user is that token."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ml_deploy import aws
from ml_deploy.config import Environment
from ml_deploy.plan import CREATE, UNCHANGED, DeployFailed, Plan, execute
from ml_deploy.publish import plan_push
from ml_deploy.release import Release
from testutil.aws import (
    ACCOUNT,
    ECR_TOKEN_CREDENTIALS,
    mutating,
    record_api_calls,
    write_test_image,
)
from ml_image.registry import Auth, AuthenticationError, RegistryClient, blob_path, ecr_credentials, read_layout
from testutil.registry import RunningRegistry, start_registry


@pytest.fixture
def environment(aws_environment: Environment) -> Environment:
    return aws_environment


def release_in(package: Path, name: str, content: bytes) -> Release:
    write_test_image(package / "image", content)
    return Release.from_spec({"name": name, "version": 1, "compute": "lambda"}, package)


def push_plan(release: Release, environment: Environment) -> Plan:
    plan = Plan(target=f"{release.name} v1 -> test", digest=release.digest, serving="nothing")
    plan_push(plan, release, environment)
    return plan


def test_motos_ecr_token_is_the_registry_user_the_tests_give_docker_registry(environment: Environment) -> None:
    # If moto changes its token, every ECR-authenticated test would fail with a bare 401: say why here.
    assert ecr_credentials("127.0.0.1", boto3_session=aws.session(environment)) == ("AWS", f"{ACCOUNT}-auth-token")
    assert ECR_TOKEN_CREDENTIALS == ("AWS", f"{ACCOUNT}-auth-token")


def test_push_authenticates_with_the_ecr_token_and_creates_the_repository(
        environment: Environment, registry: RunningRegistry, tmp_path: Path) -> None:
    release = release_in(tmp_path, "pushed", b"pushed")
    repository = f"ml/{release.name}"
    with pytest.raises(AuthenticationError):  # the registry does want credentials
        RegistryClient(registry.host, repository, Auth()).get_manifest(release.digest)

    plan = push_plan(release, environment)
    (step,) = plan.steps
    assert (step.action, step.resource) == (CREATE, f"image {registry.host}/{repository}@{release.digest}")
    execute(plan, say=lambda _: None)

    client = RegistryClient(registry.host, repository, Auth(*ECR_TOKEN_CREDENTIALS))
    client.get_manifest(release.digest)
    client.get_manifest("v1")  # and the version tag
    ecr = aws.client(environment, "ecr")
    assert [r["repositoryName"] for r in ecr.describe_repositories()["repositories"]] == [repository]

    calls = record_api_calls(aws.session(environment))  # before plan_push creates its clients
    (again,) = push_plan(release, environment).steps
    assert (again.action, again.detail) == (UNCHANGED, "already in the registry")
    assert "ecr.GetAuthorizationToken" in calls and mutating(calls) == []


def test_a_registry_that_does_not_take_the_token_fails_naming_the_registry(
        environment: Environment, tmp_path: Path) -> None:
    release = release_in(tmp_path / "package", "refused", b"refused")
    with start_registry(tmp_path / "other", username="AWS", password="not-the-token") as other:
        with pytest.raises(AuthenticationError, match=other.host):
            push_plan(release, dataclasses.replace(environment, registry=other.host))


def test_a_failed_push_is_reported_as_the_push_step(environment: Environment, registry: RunningRegistry,
                                                   tmp_path: Path) -> None:
    release = release_in(tmp_path, "broken", b"broken")
    plan = push_plan(release, environment)
    # Lose the layer after planning: the push itself has to fail, and say which step it was.
    (layer,) = read_layout(tmp_path / "image").layers
    blob_path(tmp_path / "image", layer.digest).unlink()
    with pytest.raises(DeployFailed, match=rf"create image {registry.host}/ml/broken@.* failed"):
        execute(plan, say=lambda _: None)
