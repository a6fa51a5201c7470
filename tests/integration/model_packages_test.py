"""The example models' real packages: each carries exactly its own locked dependencies and
predicts correctly on held-out examples that its training script wrote."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

# The model side of each package (the server is server.pex beside it). Packed PEXes are
# directories, run through their __main__.py.
PACKAGES = {"iris": Path("models.iris/iris/model.pex"), "digits": Path("models.digits/digits/model.pex")}
MAIN = "__main__.py"
# What each model's requirements.txt pins, and what must therefore never leak into the other.
SKLEARN = {"iris": "1.3.2", "digits": "1.5.2"}
NUMPY_MAJOR = {"iris": "1", "digits": "2"}


def installed_distributions(pex: Path) -> dict[str, str]:
    """{project name: version} of the wheels inside a (packed) PEX."""
    distributions = {}
    for wheel in (path.name for path in (pex / ".deps").glob("*.whl")):
        project, version = wheel.split("-")[:2]
        distributions[project.lower().replace("_", "-")] = version
    return distributions


@pytest.mark.parametrize("model", sorted(PACKAGES))
def test_package_holds_only_its_own_dependencies(model: str) -> None:
    distributions = installed_distributions(PACKAGES[model])
    other = next(m for m in SKLEARN if m != model)
    assert distributions["scikit-learn"] == SKLEARN[model]
    assert distributions["scikit-learn"] != SKLEARN[other]
    assert distributions["numpy"].split(".")[0] == NUMPY_MAJOR[model]
    if model == "iris":
        assert "xgboost-cpu" not in distributions
    else:
        assert "xgboost-cpu" in distributions
    # Nothing of the platform's own tooling rides along.
    assert not {"pytest", "pantsbuild-pants", "pex"} & set(distributions)


@pytest.mark.parametrize("model", sorted(PACKAGES))
def test_package_imports_its_own_versions(model: str) -> None:
    result = subprocess.run(
        [str(PACKAGES[model] / MAIN), "-c", "import sklearn, numpy; print(sklearn.__version__, numpy.__version__)"],
        env={**os.environ, "PEX_INTERPRETER": "1"},
        capture_output=True,
        text=True,
        check=True,
    )
    sklearn_version, numpy_version = result.stdout.split()
    assert sklearn_version == SKLEARN[model]
    assert numpy_version.startswith(NUMPY_MAJOR[model] + ".")


def run_package(model: str, request: dict) -> list[dict]:
    result = subprocess.run(
        [str(PACKAGES[model] / MAIN), "once"], input=json.dumps(request), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_iris_predicts_held_out_flowers() -> None:
    examples = json.loads(Path("models/iris/src/examples.json").read_text())
    predictions = run_package("iris", {"flowers": examples["inputs"]})
    assert len(predictions) == len(examples["labels"]) >= 20
    correct = sum(p["species"] == label for p, label in zip(predictions, examples["labels"]))
    assert correct / len(predictions) >= 0.9
    for p in predictions:
        assert abs(sum(p["probabilities"].values()) - 1) < 1e-6


def test_digits_predicts_held_out_images() -> None:
    examples = json.loads(Path("models/digits/src/examples.json").read_text())
    predictions = run_package("digits", {"images": examples["inputs"]})
    assert len(predictions) == len(examples["labels"]) >= 20
    correct = sum(p["digit"] == label for p, label in zip(predictions, examples["labels"]))
    assert correct / len(predictions) >= 0.9


def test_bad_input_is_reported_with_the_field_path() -> None:
    result = subprocess.run(
        [str(PACKAGES["iris"] / MAIN), "once"],
        input=json.dumps({"flowers": [{"sepal_length": 5.1}]}),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "flowers[0].sepal_width: required field is missing" in result.stderr
