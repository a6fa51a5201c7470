from __future__ import annotations

from ml_platform.conftest import ENV_INHERIT, repo_options
from ml_platform.dependency_inference import (
    InferMLModelDependencies,
    MLModelDependencyInferenceFieldSet,
)
from pants.engine.addresses import Address
from pants.engine.target import InferredDependencies
from pants.testutil.rule_runner import RuleRunner


def infer(rule_runner: RuleRunner, address: Address) -> set[Address]:
    field_set = MLModelDependencyInferenceFieldSet.create(rule_runner.get_target(address))
    result = rule_runner.request(InferredDependencies, [InferMLModelDependencies(field_set)])
    return set(result.include)


def test_infers_entry_point_owner_and_runtime(rule_runner: RuleRunner) -> None:
    rule_runner.write_files(
        {
            "models/m/model.py": "class Model:\n    def predict(self, x: int) -> int:\n        return x\n",
            "models/m/BUILD": 'python_sources(name="src", resolve="m")\nml_model(entry_point="model.py:Model")\n',
            # Same module name in another model's resolve: must not be picked.
            "models/other/model.py": "class Model: ...\n",
            "models/other/BUILD": 'python_sources(name="src", resolve="other")\n',
        }
    )
    assert infer(rule_runner, Address("models/m", target_name="m")) == {
        Address("models/m", target_name="src", relative_file_path="model.py"),
        Address("platform", target_name="ml_runtime"),
    }


def test_runtime_address_is_an_option(rule_runner: RuleRunner) -> None:
    rule_runner.write_files(
        {
            "models/m/model.py": "class Model: ...\n",
            "models/m/BUILD": 'python_sources(name="src", resolve="m")\nml_model(entry_point="model.py:Model")\n',
            "custom/rt.py": "",
            "custom/BUILD": "resources(name='rt', sources=['rt.py'])\n",
        }
    )
    rule_runner.set_options(repo_options("--ml-platform-runtime=//custom:rt"), env_inherit=ENV_INHERIT)
    assert Address("custom", target_name="rt") in infer(
        rule_runner, Address("models/m", target_name="m")
    )
