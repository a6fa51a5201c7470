from __future__ import annotations

from textwrap import dedent

import pytest

from ml_platform.conftest import make_rule_runner
from ml_platform.dependency_inference import InferMLModelDependencies, MLModelDependencyInferenceFieldSet
from ml_platform.model_folder import ml_model_addresses, ml_model_resolves
from pants.backend.python.target_types import (
    PythonRequirementModulesField,
    PythonResolveField,
    PythonRunGoalUseSandboxField,
)
from pants.engine.addresses import Address
from pants.engine.internals.scheduler import ExecutionError
from pants.engine.target import InferredDependencies, SourcesField, SourcesPaths, SourcesPathsRequest
from pants.engine.rules import QueryRule
from pants.testutil.rule_runner import RuleRunner

SRC = "models/m/src"


@pytest.fixture
def rule_runner() -> RuleRunner:
    return make_rule_runner(
        QueryRule(SourcesPaths, [SourcesPathsRequest]),
        QueryRule(InferredDependencies, [InferMLModelDependencies]),
        requirements=True,
    )


def write_model(rule_runner: RuleRunner, build: str, files: dict[str, str]) -> None:
    rule_runner.write_files({"models/m/BUILD": dedent(build), **{f"{SRC}/{k}": v for k, v in files.items()}})


def sources(rule_runner: RuleRunner, name: str) -> set[str]:
    target = rule_runner.get_target(Address(SRC, target_name=name))
    return set(rule_runner.request(SourcesPaths, [SourcesPathsRequest(target[SourcesField])]).files)


PYTHON_MODEL = """\
    ml_model(
        entry_point="src/model.py:Model",
        artifacts=["src/artifacts/*"],
        train="src/train.py",
        data=["src/examples.json"],
        module_mapping={"xgboost-cpu": ["xgboost"]},
    )
"""
PYTHON_FILES = {
    "model.py": "class Model:\n    def predict(self, x: int) -> int:\n        return x\n",
    "helpers.py": "",
    "helpers_test.py": "",
    "train.py": "print('trained')\n",
    "requirements.txt": "xgboost-cpu==2.1.1\n",
    "artifacts/weights.bin": "w",
    "examples.json": "{}",
}


def test_one_build_file_makes_the_targets_of_the_code_folder(rule_runner: RuleRunner) -> None:
    write_model(rule_runner, PYTHON_MODEL, PYTHON_FILES)
    assert sources(rule_runner, "src") == {f"{SRC}/model.py", f"{SRC}/helpers.py"}  # no tests, no training
    assert sources(rule_runner, "artifacts") == {f"{SRC}/artifacts/weights.bin"}
    assert sources(rule_runner, "data") == {f"{SRC}/examples.json"}
    assert sources(rule_runner, "train") == {f"{SRC}/train.py"}
    # All in the model's resolve (the folder's name), the training script run where it lies.
    train = rule_runner.get_target(Address(SRC, target_name="train", relative_file_path="train.py"))
    assert train[PythonResolveField].value == "m"
    assert train[PythonRunGoalUseSandboxField].value is False
    requirement = rule_runner.get_target(Address(SRC, target_name="reqs", generated_name="xgboost-cpu"))
    assert requirement[PythonResolveField].value == "m"
    assert requirement[PythonRequirementModulesField].value == ("xgboost",)


def test_the_model_depends_on_its_requirements_and_artifacts(rule_runner: RuleRunner) -> None:
    write_model(rule_runner, PYTHON_MODEL, PYTHON_FILES)
    field_set = MLModelDependencyInferenceFieldSet.create(rule_runner.get_target(Address("models/m", target_name="m")))
    inferred = set(rule_runner.request(InferredDependencies, [InferMLModelDependencies(field_set)]).include)
    assert {Address(SRC, target_name="reqs"), Address(SRC, target_name="artifacts"),
            Address(SRC, target_name="src", relative_file_path="model.py")} <= inferred


def test_an_r_model_ships_its_r_file_and_trains_with_an_r_script(rule_runner: RuleRunner) -> None:
    write_model(rule_runner, """\
        ml_model(entry_point="src/model.R", artifacts=["src/artifacts/*"], train="src/train.R")
    """, {"model.R": "", "train.R": "", "artifacts/forest.rds": "x"})
    assert sources(rule_runner, "artifacts") == {f"{SRC}/model.R", f"{SRC}/artifacts/forest.rds"}
    assert rule_runner.get_target(Address(SRC, target_name="train")).alias == "ml_r_script"
    with pytest.raises(ExecutionError):  # no Python targets for an R model
        rule_runner.get_target(Address(SRC, target_name="src"))


def test_a_build_file_in_the_code_folder_replaces_a_made_target(rule_runner: RuleRunner) -> None:
    write_model(rule_runner, PYTHON_MODEL, {**PYTHON_FILES, "BUILD": 'files(name="data", sources=["*.json", "artifacts/*"])\n'})
    assert sources(rule_runner, "data") == {f"{SRC}/examples.json", f"{SRC}/artifacts/weights.bin"}


def test_a_file_outside_the_code_folder_says_where_it_must_be(rule_runner: RuleRunner) -> None:
    write_model(rule_runner, 'ml_model(entry_point="src/model.py:Model", data=["data/wine.csv"])\n', PYTHON_FILES)
    with pytest.raises(ExecutionError) as error:
        rule_runner.get_target(Address(SRC, target_name="src"))
    assert "The `data` field in target models/m:m holds 'data/wine.csv', outside `src/`" in str(error.value)


def test_without_requirements_there_is_no_requirements_target(rule_runner: RuleRunner) -> None:
    write_model(rule_runner, 'ml_model(entry_point="src/model.py:Model")\n', {"model.py": "class Model: ...\n"})
    assert sources(rule_runner, "src") == {f"{SRC}/model.py"}
    with pytest.raises(ExecutionError):
        rule_runner.get_target(Address(SRC, target_name="reqs"))


def test_the_model_resolves_are_those_under_models(tmp_path) -> None:
    config = tmp_path / "pants.toml"
    config.write_text(dedent("""\
        [python.resolves]
        tests = "tests/tests.lock"
        iris = "models/iris/iris.lock"  # a comment
        # lgbm = "models/lgbm/lgbm.lock"
        digits = "models/digits/digits.lock"

        [python.resolves_to_interpreter_constraints]
        other = "models/x.lock"
    """))
    assert ml_model_resolves(str(config)) == ("iris", "digits")
    assert ml_model_addresses(str(config)) == ("models/digits:digits", "models/iris:iris")
