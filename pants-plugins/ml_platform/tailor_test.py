from __future__ import annotations

import pytest

from ml_platform.conftest import make_rule_runner
from ml_platform.tailor import PutativeMLModelTargetsRequest
from pants.core.goals.tailor import PutativeTarget, PutativeTargets
from pants.engine.rules import QueryRule
from pants.testutil.rule_runner import RuleRunner

HANDLER = '''"""Gradient-boosted trees (LightGBM) for churn.

More words."""


class Churn:
    def load(self) -> None: ...

    def predict(self, rows: list[dict]) -> list[float]:
        return [0.0 for _ in rows]
'''


@pytest.fixture
def rule_runner() -> RuleRunner:
    return make_rule_runner(QueryRule(PutativeTargets, [PutativeMLModelTargetsRequest]))


def putative(rule_runner: RuleRunner, *dirs: str) -> list[PutativeTarget]:
    return list(rule_runner.request(PutativeTargets, [PutativeMLModelTargetsRequest(dirs)]))


def test_a_folder_with_a_handler_and_requirements_gets_its_one_build_file(rule_runner: RuleRunner) -> None:
    rule_runner.write_files({
        "models/churn/src/model.py": HANDLER,
        "models/churn/src/requirements.txt": "lightgbm==4.5.0\n",
        "models/churn/src/train.py": "",
        "models/churn/src/artifacts/booster.txt": "",
        "models/churn/src/examples.json": "{}",
    })
    (target,) = putative(rule_runner, "models/churn/src", "models/churn/src/artifacts")
    assert (target.path, target.name, target.type_alias) == ("models/churn", "churn", "ml_model")
    assert dict(target.kwargs) == {
        "description": "Gradient-boosted trees (LightGBM) for churn.",
        "entry_point": "src/model.py:Churn",
        "artifacts": ("src/artifacts/**/*",),
        "train": "src/train.py",
        "data": ("src/examples.json",),
    }
    # The resolve is not declared: the BUILD file says which line pants.toml needs.
    assert 'churn = "models/churn/churn.lock"' in "\n".join(target.comments)
    assert 'ml_model(\n    description="Gradient-boosted trees' in target.generate_build_file_stanza("    ")


def test_an_r_model_and_a_declared_resolve(rule_runner: RuleRunner) -> None:
    rule_runner.write_files({"models/m/src/model.R": "endpoints <- list()\n", "models/m/src/train.R": ""})
    (target,) = putative(rule_runner, "models/m/src")
    # Its training script will write artifacts/: the model ships what it writes there.
    assert dict(target.kwargs) == {"entry_point": "src/model.R", "artifacts": ("src/artifacts/**/*",), "train": "src/train.R"}
    assert target.comments == ()  # `m` is in [python.resolves]


def test_folders_with_a_build_file_or_no_handler_class_are_left_alone(rule_runner: RuleRunner) -> None:
    rule_runner.write_files({
        "models/done/BUILD": "",
        "models/done/src/model.py": HANDLER,
        "models/done/src/requirements.txt": "",
        "models/nohandler/src/model.py": "def predict(x): ...\n",
        "models/nohandler/src/requirements.txt": "",
        "models/noreqs/src/model.py": HANDLER,
    })
    assert putative(rule_runner, "models/done/src", "models/nohandler/src", "models/noreqs/src") == []
