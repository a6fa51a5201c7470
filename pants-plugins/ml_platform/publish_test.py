from __future__ import annotations

from ml_platform.conftest import ENV_INHERIT, repo_options
from ml_platform.publish import PublishMLModelFieldSet, PublishMLModelRequest
from pants.core.goals.publish import PublishProcesses
from pants.engine.addresses import Address
from pants.testutil.rule_runner import RuleRunner


def publish(rule_runner: RuleRunner, *options: str) -> PublishProcesses:
    rule_runner.write_files({"models/m/BUILD": 'ml_model(entry_point="model.py:Model", version=3)\n',
                             "models/m/model.py": "class Model: ...\n"})
    rule_runner.set_options(repo_options(*options), env_inherit=ENV_INHERIT)
    field_set = PublishMLModelFieldSet.create(rule_runner.get_target(Address("models/m", target_name="m")))
    return rule_runner.request(PublishProcesses, [PublishMLModelRequest(field_set, ())])


def test_without_a_registry_publish_says_how_to_set_one(rule_runner: RuleRunner) -> None:
    (package,) = publish(rule_runner)
    assert package.names == ("ml/m:v3",)
    assert package.process is None
    assert "[ml-platform].registry" in package.description


def test_images_off_skips_with_the_reason(rule_runner: RuleRunner) -> None:
    (package,) = publish(rule_runner, "--ml-platform-registry=127.0.0.1:5000",
                         "--ml-platform-image-repository=team/{name}")
    assert package.names == ("127.0.0.1:5000/team/m:v3",)
    assert package.process is None  # the test options turn image building off
    assert "build_images" in package.description
