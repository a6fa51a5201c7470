from __future__ import annotations

from pathlib import Path

import pytest

from ml_deploy.config import ConfigError, Environment, load, parse

REPO_CONFIG = Path("platform/deploy.yaml")


def test_the_repos_environments_file_parses() -> None:
    local = load(REPO_CONFIG, "local", env={})
    assert (local.compute, local.domain, local.gateway_port) == ("local", "localhost", 8480)
    aws = {"AWS_ACCOUNT_ID": "123456789012", "ML_VPC_ID": "vpc-1", "ML_SUBNET_A": "subnet-a",
           "ML_SUBNET_B": "subnet-b", "ML_SECURITY_GROUP": "sg-1", "ML_LISTENER_ARN": "arn:listener"}
    prod = load(REPO_CONFIG, "prod", env=aws)
    assert prod.registry == "123456789012.dkr.ecr.eu-west-1.amazonaws.com"
    assert prod.subnets == ("subnet-a", "subnet-b")
    assert (prod.domain, prod.cluster) == ("example.com", "ml-prod")  # prod overrides the shared dev values
    assert prod.lambda_role == "arn:aws:iam::123456789012:role/ml-prod-lambda"


def test_variables_expand_with_defaults_and_fail_naming_the_key_when_unset() -> None:
    data = {"dev": {"domain": "${DOMAIN:-example.org}", "registry": "${ACCOUNT}.dkr", "gateway_port": "${PORT:-9000}"}}
    env = parse(data, "dev", env={"ACCOUNT": "42"})
    assert (env.domain, env.registry, env.gateway_port) == ("example.org", "42.dkr", 9000)
    with pytest.raises(ConfigError, match=r"deploy.yaml: dev.registry: \$\{ACCOUNT\} is not set"):
        parse(data, "dev", env={})


@pytest.mark.parametrize(
    "section, message",
    [
        ({"regoin": "x"}, r"dev.regoin: unknown setting; the settings are:\n  compute: "),
        ({"compute": "k8s"}, r"dev.compute: 'k8s' is not one of local, lambda, fargate, ecs, ec2"),
        ({"subnets": [1]}, r"dev.subnets: expected a list of strings"),
        ({"gateway_port": "eighty"}, r"dev.gateway_port: expected a whole number"),
        ({"domain": ["a"]}, r"dev.domain: expected a string"),
    ],
)
def test_bad_settings_name_the_environment_and_key(section: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse({"dev": section}, "dev", env={})


def test_an_unknown_environment_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"has no environment 'qa'; it has: dev, prod"):
        parse({"dev": {}, "prod": {}}, "qa", env={})


def test_require_names_the_missing_settings() -> None:
    with pytest.raises(ConfigError, match=r"'dev': deploying iris to lambda needs registry, lambda_role"):
        Environment(name="dev").require("registry", "lambda_role", why="deploying iris to lambda")


def test_local_state_dir_defaults_under_xdg_state_home(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert Environment(name="local").local_state_dir() == tmp_path / "ml-platform" / "local"
    assert Environment(name="local", state_dir=str(tmp_path / "s")).local_state_dir() == tmp_path / "s"
