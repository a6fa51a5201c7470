"""Model secrets: where an environment says each comes from, the local sources, AWS Secrets
Manager and SSM Parameter Store on moto (a real AWS account cannot be used here: moto does not
check signatures or roles, so the signature is checked against botocore's own signer instead),
the ECS task definition and the Lambda function that name them, and the start-time read.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from pathlib import Path

import botocore.auth
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from ml_deploy import aws, secrets
from ml_deploy.config import ConfigError, Environment
from ml_deploy.conftest import Deployer
from ml_runtime import aws_secrets
from testutil.aws import FAKE_CREDENTIALS, REGION, create_lambda_role, with_load_balancer

VALUE = "sk-test-4f9a1c0e7b2d"  # a secret value: it must never be printed or stored


def test_a_secret_the_environment_does_not_map_fails_naming_it_and_the_file() -> None:
    environment = Environment(name="dev", secrets={"OTHER": "env:X"})
    with pytest.raises(ConfigError, match=r"support_reply needs the secret API_KEY, which environment 'dev' "
                                          r"\(platform/deploy.yaml\) does not map"):
        secrets.sources(("API_KEY",), environment, "support_reply", secrets.AWS_KINDS)
    local_only = Environment(name="dev", secrets={"API_KEY": "env:KEY"})
    with pytest.raises(ConfigError, match="must be one of: secretsmanager:<...>, ssm:<...>"):
        secrets.sources(("API_KEY",), local_only, "support_reply", secrets.AWS_KINDS)


def test_local_secrets_come_from_the_deploys_environment_or_a_file(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(VALUE + "\n")
    environment = Environment(name="local", secrets={"A": "env:MY_KEY", "B": f"file:{key_file}"})
    found = secrets.sources(("A", "B"), environment, "m", secrets.LOCAL_KINDS)
    assert [s.describe() for s in found] == ["A <- env:MY_KEY", f"B <- file:{key_file}"]
    assert secrets.local_values(found, {"MY_KEY": VALUE}) == {"A": VALUE, "B": VALUE}
    with pytest.raises(ConfigError, match="secret A: the environment variable MY_KEY is not set"):
        secrets.local_values(found, {})
    key_file.unlink()
    with pytest.raises(ConfigError, match=f"secret B: cannot read {key_file}"):
        secrets.local_values(found, {"MY_KEY": VALUE})


@pytest.fixture
def stored(aws_environment: Environment) -> Environment:
    """The account holds the key in Secrets Manager and a password in SSM."""
    aws.client(aws_environment, "secretsmanager").create_secret(Name="ml/llm-key", SecretString=VALUE)
    aws.client(aws_environment, "ssm").put_parameter(Name="/ml/db-password", Value="pw-" + VALUE,
                                                      Type="SecureString")
    return dataclasses.replace(with_load_balancer(aws_environment), lambda_role=create_lambda_role(aws.session(aws_environment)), secrets={
        "API_KEY": "secretsmanager:ml/llm-key", "DB_PASSWORD": "ssm:/ml/db-password",
        "GONE": "secretsmanager:ml/never-created"})


def test_aws_secrets_are_checked_to_exist_without_reading_them(stored: Environment) -> None:
    found = secrets.sources(("API_KEY", "DB_PASSWORD"), stored, "m", secrets.AWS_KINDS)
    arns = secrets.aws_arns(found, lambda service: aws.client(stored, service))
    assert arns["API_KEY"].startswith(f"arn:aws:secretsmanager:{REGION}:") and ":secret:ml/llm-key" in arns["API_KEY"]
    assert arns["DB_PASSWORD"].endswith(":parameter/ml/db-password")
    missing = secrets.sources(("GONE",), stored, "m", secrets.AWS_KINDS)
    with pytest.raises(ConfigError, match="secret GONE: secretsmanager:ml/never-created cannot be found"):
        secrets.aws_arns(missing, lambda service: aws.client(stored, service))


def test_the_server_reads_its_secrets_at_start_with_the_standard_library(stored: Environment) -> None:
    environ = {**FAKE_CREDENTIALS, "AWS_ENDPOINT_URL": stored.endpoint_url or "",
               aws_secrets.SECRETS_ENV: json.dumps({"API_KEY": "secretsmanager:ml/llm-key",
                                                    "DB_PASSWORD": "ssm:/ml/db-password"})}
    assert aws_secrets.load_into(environ) == ["API_KEY", "DB_PASSWORD"]
    assert (environ["API_KEY"], environ["DB_PASSWORD"]) == (VALUE, "pw-" + VALUE)
    environ[aws_secrets.SECRETS_ENV] = json.dumps({"GONE": "secretsmanager:ml/never-created"})
    with pytest.raises(aws_secrets.SecretUnavailable, match="secret GONE: secretsmanager:ml/never-created answered 4"):
        aws_secrets.load_into(environ)


def test_the_signature_is_the_one_botocore_makes(monkeypatch) -> None:
    url = "https://secretsmanager.eu-west-1.amazonaws.com/"
    body = json.dumps({"SecretId": "ml/llm-key"}).encode()
    headers = {"content-type": "application/x-amz-json-1.1", "x-amz-target": "secretsmanager.GetSecretValue"}
    when = datetime.datetime(2026, 12, 2, 10, 30, 0, tzinfo=datetime.timezone.utc)
    credentials = {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                   "AWS_SESSION_TOKEN": "session-token"}
    ours = aws_secrets.sign("POST", url, body, headers, "secretsmanager", "eu-west-1", credentials, now=when)

    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda remove_tzinfo=True: when.replace(tzinfo=None))
    theirs = AWSRequest(method="POST", url=url, data=body, headers=headers)
    SigV4Auth(Credentials("AKIDEXAMPLE", credentials["AWS_SECRET_ACCESS_KEY"], "session-token"),
              "secretsmanager", "eu-west-1").add_auth(theirs)
    assert ours["authorization"] == theirs.headers["Authorization"]


def test_ecs_names_each_secret_and_no_plan_shows_a_value(tmp_path: Path, stored: Environment) -> None:
    deployer = Deployer(tmp_path, stored, {"name": "support_reply", "version": 1, "compute": "fargate", "cpu": 0.5,
                                           "memory": 1024, "secrets": ["API_KEY", "DB_PASSWORD"]})
    release = deployer.release("one")
    deployer.deploy(release, dry_run=True)
    assert VALUE not in deployer.text
    assert deployer.deploy(release)
    ecs_client = aws.client(stored, "ecs")
    (service,) = ecs_client.describe_services(cluster=stored.cluster, services=[release.resource_name])["services"]
    definition = ecs_client.describe_task_definition(taskDefinition=service["taskDefinition"])["taskDefinition"]
    (container,) = definition["containerDefinitions"]
    assert [s["name"] for s in container["secrets"]] == ["API_KEY", "DB_PASSWORD"]
    assert ":secret:ml/llm-key" in container["secrets"][0]["valueFrom"]
    assert VALUE not in json.dumps(definition, default=str) and VALUE not in deployer.text
    # A changed source is a new revision, and the plan says so (by reference).
    moved = dataclasses.replace(stored, secrets={**stored.secrets, "DB_PASSWORD": "secretsmanager:ml/llm-key"})
    plan = Deployer(tmp_path, moved, deployer.spec).plan(release)
    (step,) = [s for s in plan.steps if s.resource.startswith("ECS task definition")]
    assert "secrets: API_KEY <- arn:" in step.detail and VALUE not in step.describe()


def test_lambda_gets_where_its_secrets_are_never_their_values(tmp_path: Path, stored: Environment) -> None:
    deployer = Deployer(tmp_path, stored, {"name": "support_reply", "version": 1, "compute": "lambda",
                                           "memory": 512, "secrets": ["API_KEY"]})
    release = deployer.release("one")
    assert deployer.deploy(release)
    configuration = aws.client(stored, "lambda").get_function_configuration(FunctionName=release.resource_name)
    variables = configuration["Environment"]["Variables"]
    assert json.loads(variables[aws_secrets.SECRETS_ENV]) == {"API_KEY": "secretsmanager:ml/llm-key"}
    assert VALUE not in json.dumps(configuration, default=str) and VALUE not in deployer.text
    missing = Deployer(tmp_path, stored, {**deployer.spec, "secrets": ["GONE"]})
    with pytest.raises(ConfigError, match="secret GONE: secretsmanager:ml/never-created cannot be found"):
        missing.plan(missing.release("two"))
