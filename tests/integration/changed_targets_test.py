"""`--changed-since` on a real git history selects exactly the models a commit affects.

Runs ./pants (no daemon) in a scratch copy of the repository with its own git history.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from testutil.scratch import commit_change, scratch_repo

# Every model: each folder of models/ whose BUILD file declares an ml_model.
ALL_MODELS = {f"models/{build.parent.name}:{build.parent.name}" for build in Path("models").glob("*/BUILD")
              if "ml_model(" in build.read_text()}
# The models that import ml_shared.artifacts.
ARTIFACTS_USERS = {"models/digits:digits", "models/iris:iris", "models/tabular_tf:tabular_tf"}


def pants(repo: Path, *args: str, with_stderr: bool = False) -> str:
    result = subprocess.run(
        ["bash", "pants", "--no-pantsd", "--no-dynamic-ui", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        env={**os.environ, "PANTS_CONCURRENT": "true"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout + (result.stderr if with_stderr else "")


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    # The sandbox holds the repo's files through the //:repo target. tests/ too: BUILD files in
    # platform/ name targets in tests/aws and tests/fakes.
    return scratch_repo(tmp_path_factory.mktemp("repo"),
                        ("pants", "pants.toml", "BUILD", "pants-plugins", "platform", "models", "tests"))


def changed_models(repo: Path) -> set[str]:
    out = pants(
        repo,
        "--changed-since=HEAD~1",
        "--changed-dependents=transitive",
        "--filter-target-type=ml_model",
        "list",
    )
    return set(out.split())


# Each case commits one change on top of the previous ones and asks what changed since HEAD~1.
CASES = [
    ("models/iris/src/model.py", "# a comment\n", {"models/iris:iris"}),
    ("models/shared/src/ml_shared/artifacts.py", "# shared\n", ARTIFACTS_USERS),
    ("docs/notes.md", "unrelated\n", set()),
    ("models/digits/src/artifacts/scaler.joblib", "\n", {"models/digits:digits"}),
    ("models/digits/src/requirements.txt", "# pins unchanged\n", {"models/digits:digits"}),
    ("models/iris/iris.lock", "\n", {"models/iris:iris"}),
    # Training data and the training script are not shipped: nothing to redeploy.
    ("models/tabular_tf/src/data/wine.csv", "\n", set()),
    ("models/iris/src/train.py", "# retrain\n", set()),
    ("models/iris_forest/src/model.R", "# R\n", {"models/iris_forest:iris_forest"}),
    ("platform/ml_runtime/once.py", "# runtime\n", ALL_MODELS),
]


def test_changed_since_selects_affected_models(repo: Path) -> None:
    assert set(pants(repo, "--filter-target-type=ml_model", "list", "::").split()) == ALL_MODELS
    for path, line, expected in CASES:
        commit_change(repo, path, line)
        assert changed_models(repo) == expected, f"after a commit changing {path}"


def test_help_documents_every_field(repo: Path) -> None:
    out = pants(repo, "help", "ml_model")
    for field in (
        "entry_point", "resolve", "version", "compute", "cpu", "memory", "gpu", "workers", "threads",
        "worker_memory", "timeout", "env", "description", "dependencies", "artifacts", "train", "data",
        "module_mapping", "system_packages", "secrets",
    ):
        assert f"\n{field}\n" in out, f"`help ml_model` lacks {field}"


def test_publish_pushes_only_what_changed(repo: Path, tmp_path: Path) -> None:
    """`./pants publish` pushes each image to the registry; after a commit that changes one line
    of one model, only that image's code layer and config travel."""
    from ml_image.registry import Auth, pull
    from testutil.registry import start_registry

    with start_registry(tmp_path / "registry", auth="none") as registry:
        option = f"--ml-platform-registry={registry.host}"
        first = pants(repo, option, "publish", "models/iris:", with_stderr=True)
        assert f"{registry.host}/ml/iris:v1 published" in first.replace("✓ ", "")
        commit_change(repo, "models/iris/src/model.py", "# publish me\n")
        second = pants(repo, option, "publish", "models/iris:", with_stderr=True)
        summary = json.loads(next(line for line in second.splitlines() if line.startswith("{")))
        # The code layer and the config; every other layer was there already.
        assert summary["uploaded"] == 2 and summary["skipped"] >= 3, summary
        assert summary["uploaded_bytes"] < 100_000 < summary["skipped_bytes"]
        pulled = pull(f"{registry.host}/ml/iris:v1", tmp_path / "pulled", Auth(), quiet=True)
        assert f"@{pulled.manifest_digest}" in summary["reference"]
