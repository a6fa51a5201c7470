from __future__ import annotations

import pytest

from ml_platform.conftest import ENV_INHERIT, make_rule_runner, repo_options
from ml_platform.deploy import Deploy
from pants.core.goals import publish
from pants.core.goals.deploy import Deploy as ExperimentalDeploy, rules as experimental_deploy_rules
from ml_contract.model_settings import ModelSettings
from pants.engine.addresses import Address
from pants.engine.internals.scheduler import ExecutionError
from pants.testutil.rule_runner import RuleRunner


def test_the_settings_handed_to_the_deploy_tools_carry_the_fields(rule_runner: RuleRunner) -> None:
    rule_runner.write_files({
        "models/m/BUILD": 'ml_model(entry_point="model.py:Model", version=2, compute="lambda", '
                          'memory=2048, timeout=30, env={"A": "1"}, description="d")\n',
        "models/m/model.py": "class Model: ...\n",
    })
    target = rule_runner.get_target(Address("models/m", target_name="m"))
    # What `deploy` writes for the tools, read back as they read it.
    settings = ModelSettings.from_json(target.settings().to_json())
    assert settings == ModelSettings(name="m", address="models/m:m", version=2, compute="lambda",
                                     memory=2048, timeout=30, env={"A": "1"}, description="d")
    assert (settings.effective_cpu, settings.effective_memory, settings.gpu) == (0.5, 2048, 0)


def test_nothing_to_deploy_is_not_an_error(rule_runner: RuleRunner) -> None:
    # What CI meets on a docs-only commit: no ml_model among the changed targets.
    result = rule_runner.run_goal_rule(Deploy, global_args=repo_options(), args=["platform:stub"],
                                       env_inherit=ENV_INHERIT)
    assert result.exit_code == 0
    assert "Nothing to deploy" in result.stderr


def test_deploy_refuses_to_run_without_images(rule_runner: RuleRunner) -> None:
    rule_runner.write_files({"models/m/BUILD": 'ml_model(entry_point="model.py:Model")\n',
                             "models/m/model.py": "class Model: ...\n"})
    with pytest.raises(ExecutionError, match=r"models/m:m: `deploy` rolls out images by digest"):
        rule_runner.run_goal_rule(Deploy, global_args=repo_options(), args=["models/m:m"],
                                  env_inherit=ENV_INHERIT)


def test_experimental_deploy_runs_the_same_rollout() -> None:
    # Pants' own goal reaches the ml_model rollout through the DeployFieldSet union: here its
    # first check, which needs no images built.
    rule_runner = make_rule_runner(*experimental_deploy_rules(), *publish.rules())
    rule_runner.write_files({"models/m/BUILD": 'ml_model(entry_point="model.py:Model")\n',
                             "models/m/model.py": "class Model: ...\n"})
    with pytest.raises(ExecutionError, match=r"models/m:m: `deploy` rolls out images by digest"):
        rule_runner.run_goal_rule(ExperimentalDeploy, global_args=repo_options(), args=["models/m:m"],
                                  env_inherit=ENV_INHERIT)



def test_ci_credentials_reach_the_deploy_tools() -> None:
    """Every AWS credential mechanism (ml_contract.aws_env, checked against botocore in
    platform/ml_deploy/aws_test.py) is handed to the deploy tools' process."""
    from ml_contract.aws_env import AWS_ENV
    from ml_platform.deploy import _DEPLOY_ENV

    assert set(AWS_ENV) <= set(_DEPLOY_ENV)
    for name in ("AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                 "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CA_BUNDLE"):
        assert name in _DEPLOY_ENV
