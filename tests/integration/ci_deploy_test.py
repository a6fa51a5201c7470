"""CI on a real git history: `.ci/deploy-changed` tests, packages, publishes and deploys exactly
the models a commit affects, here to a `local` environment of a scratch clone.

Three commits: one model's code (that model only), shared platform runtime code (every
model), docs only (nothing). Each model's live digest is read back from the local deploy state,
and the models answer through the gateway afterwards.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import urllib.request
from pathlib import Path

import pytest

from ml_deploy import config, local
from testutil.load import teardown_on_sigterm
from testutil.net import free_port

from testutil.scratch import commit_change, scratch_repo

# The scikit-learn models only: what CI selects is the same for any model, and the torch models'
# local deploys are deploy_local_test's (deploying them three times here cost ~8 minutes).
MODELS = {"iris", "digits"}
# Every other model folder (the torch models and the LLM chain have deploy tests of their own:
# deploy_local), left out of the scratch repository; `shared` stays, iris and digits use it.
OTHER_MODELS = tuple(sorted(p.name for p in Path("models").iterdir() if p.name not in {*MODELS, "shared"}))
DEPLOYED = re.compile(r"^✓ models/(\w+):\w+ deployed \(ci\)$", re.MULTILINE)


def run(repo: Path, *argv: str) -> str:
    result = subprocess.run(
        list(argv), cwd=repo, capture_output=True, text=True,
        env={**os.environ, "PANTS_CONCURRENT": "true"},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(argv)} failed:\n{output[-6000:]}"
    return output


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    teardown_on_sigterm()
    state = tmp_path_factory.mktemp("state")
    # //:repo puts the repository's files in the sandbox, but not the integration tests. The
    # plugin's own tests are left out too: they take minutes and are run by the suite anyway.
    repo = scratch_repo(
        tmp_path_factory.mktemp("repo"),
        ("pants", "pants.toml", "BUILD", ".ci", "pants-plugins", "platform", "models", "tests"),
        ignore_in={"pants-plugins": ("*_test.py",), "models": OTHER_MODELS},
        append={
            "platform/deploy.yaml": f"\nci:\n  compute: local\n  engine: process\n  state_dir: {state}\n"
                                    f"  gateway_port: {free_port()}\n",
            "README.md": "# scratch\n",
        },
    )
    environment = config.load(repo / "platform/deploy.yaml", "ci")
    try:
        yield repo, environment
    finally:
        local.stop(environment, say=lambda _: None)


def live_digests(environment: config.Environment) -> dict[str, str]:
    return {d["name"]: d["digest"] for d in local.deployments(environment)}


def predict(environment: config.Environment, model: str, body: dict) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{environment.gateway_port}/v1/predict", data=json.dumps(body).encode(),
        headers={"Host": f"{model}.ml.localhost", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def ci(repo: Path) -> tuple[str, set[str]]:
    out = run(repo, "bash", ".ci/deploy-changed", "--env", "ci", "HEAD~1")
    return out, set(DEPLOYED.findall(out))


def test_ci_ships_exactly_what_each_commit_changed(repo) -> None:
    repo, environment = repo
    first = run(repo, "bash", "pants", "--no-pantsd", "--no-dynamic-ui", "deploy", "--deploy-env=ci", "models/::")
    assert set(DEPLOYED.findall(first)) == MODELS, first[-3000:]
    before = live_digests(environment)
    assert set(before) == MODELS

    commit_change(repo, "models/iris/src/model.py", "# a one-line change\n")
    out, deployed = ci(repo)
    assert deployed == {"iris"}, out[-3000:]
    assert "== test" in out and "== package" in out and "== publish + deploy (ci)" in out
    after_model = live_digests(environment)
    assert after_model["iris"] != before["iris"] and after_model["digits"] == before["digits"]

    commit_change(repo, "platform/ml_runtime/codec.py", "# shared platform code\n")
    out, deployed = ci(repo)
    assert deployed == MODELS, out[-3000:]
    after_runtime = live_digests(environment)
    assert all(after_runtime[m] != after_model[m] for m in MODELS)

    commit_change(repo, "README.md", "docs only\n")
    out, deployed = ci(repo)
    assert deployed == set() and "Nothing to deploy." in out, out[-3000:]
    assert live_digests(environment) == after_runtime

    flower = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
    assert predict(environment, "iris", {"flowers": [flower]})
