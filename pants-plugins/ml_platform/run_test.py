from __future__ import annotations

import pytest

from ml_platform.conftest import make_rule_runner
from ml_platform.run import LiveReloadSources, MLModelRunFieldSet, MLRScriptRunFieldSet
from pants.core.goals.run import RunRequest
from pants.engine.addresses import Address
from pants.engine.rules import QueryRule
from pants.testutil.rule_runner import RuleRunner


@pytest.fixture
def rule_runner() -> RuleRunner:
    return make_rule_runner(
        QueryRule(LiveReloadSources, [MLModelRunFieldSet]),
        QueryRule(RunRequest, [MLRScriptRunFieldSet]),
        requirements=True,
    )


def test_pants_run_watches_the_models_own_sources_not_the_runtime(rule_runner: RuleRunner) -> None:
    rule_runner.write_files({
        "models/m/BUILD": 'ml_model(entry_point="src/model.py:Model", artifacts=["src/artifacts/*"])\n',
        "models/m/src/model.py": "import helpers\n\nclass Model:\n    def predict(self, x: int) -> int:\n        return x\n",
        "models/m/src/requirements.txt": "",
        "models/m/src/artifacts/weights.bin": "w",
        "models/m/src/helpers.py": "",
    })
    field_set = MLModelRunFieldSet.create(rule_runner.get_target(Address("models/m", target_name="m")))
    sources = rule_runner.request(LiveReloadSources, [field_set])
    # The repo options' source roots are /platform and /models/*: the code's root is models/m.
    assert sources.roots == ("models/m",)
    assert sources.rebuild_files == ("models/m/src/requirements.txt", "models/m/m.lock")


def test_an_r_script_runs_where_it_lies_with_rscript(rule_runner: RuleRunner) -> None:
    # Without R this fails saying what to install (run.R_MISSING; .ci/install-deps installs it).
    rule_runner.write_files({"models/r/BUILD": 'ml_r_script(name="train", source="src/train.R")\n', "models/r/src/train.R": ""})
    field_set = MLRScriptRunFieldSet.create(rule_runner.get_target(Address("models/r", target_name="train")))
    request = rule_runner.request(RunRequest, [field_set])
    assert request.args[0].endswith("/Rscript") and request.args[1:] == ("models/r/src/train.R",)

