"""Live reload (ml_serving.reload), as `pants run` starts it: the packaged server watching a
copy of the model's source folder. An edit is served within seconds, a broken edit keeps the
last good version serving and says why, a new endpoint gets its route, and a requirements
change says a rebuild is needed."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

from served_model import ServedModel

IRIS = Path("models.iris/iris")
IRIS_FOREST = Path("models.iris_forest/iris_forest")
FLOWER = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
# An edit must be live within this (the target is seconds: one worker loads iris in ~0.5 s).
RELOAD_TIMEOUT = 20


def until(check: Callable[[], bool], what: str, served: ServedModel) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > RELOAD_TIMEOUT:
            raise AssertionError(f"not within {RELOAD_TIMEOUT} s: {what}\n{served.stderr_path.read_text()[-3000:]}")
        time.sleep(0.1)
    return time.monotonic() - started


def serve_with_reload(package: Path, src: Path, tmp: Path, *rebuild: Path) -> ServedModel:
    return ServedModel(package, tmp, "--reload-root", str(src), "--reload-base", str(package / "model.pex"),
                       *(a for f in rebuild for a in ("--reload-rebuild-file", str(f))))


def species(served: ServedModel) -> str:
    status, _, body = served.request("POST", "/v1/predict", {"flowers": [FLOWER]})
    assert status == 200, body
    return body[0]["species"]


def test_an_edit_is_served_and_a_broken_one_keeps_the_last_good_version(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree("models/iris/src", src)
    served = serve_with_reload(IRIS, src, tmp_path, src / "requirements.txt")
    try:
        assert species(served) == "setosa"
        model = src / "model.py"
        original = model.read_text()
        model.write_text(original.replace("species=self._species[int(row.argmax())],",
                                          "species=self._species[int(row.argmax())].upper(),"))
        seconds = until(lambda: species(served) == "SETOSA", "the edited code answers", served)
        print(f"edit to new answer: {seconds:.2f} s")
        assert "serving the new version" in served.stderr_path.read_text()

        model.write_text(original + "\nthis is not python(\n")
        until(lambda: '"event": "reload_failed"' in served.stderr_path.read_text(), "the failure is said", served)
        assert "SyntaxError" in served.stderr_path.read_text()
        assert "The last good version keeps serving" in served.stderr_path.read_text()
        assert species(served) == "SETOSA"
        status, _, ready = served.request("GET", "/v2/health/ready")
        assert status == 200, ready

        # A new endpoint: its route and schema come with the new workers.
        model.write_text(original + "\n\ndef _count(self, flowers: list[Flower]) -> int:\n    return len(flowers)\n\n"
                         "Model.count = _count\n")
        until(lambda: served.request("POST", "/v1/count", {"flowers": [FLOWER, FLOWER]})[2] == 2,
              "the new endpoint answers", served)
        _, _, document = served.request("GET", "/openapi.json")
        assert "/v1/count" in document["paths"]
        assert species(served) == "setosa"

        (src / "requirements.txt").write_text((src / "requirements.txt").read_text() + "\n# changed\n")
        until(lambda: "needs a rebuild" in served.stderr_path.read_text(), "a rebuild is asked for", served)
        assert species(served) == "setosa"
    finally:
        assert served.stop() == 0
    assert "Traceback" not in served.stdout_path.read_text()


def test_a_requirements_change_rebuilds_the_environment_or_keeps_the_last_good_one(tmp_path: Path) -> None:
    """`pants run` passes its `pants package` of the model as the rebuild; here a copy of the
    package stands in for it (a failing one, then a working one): the server runs it, and the
    new workers start from what it wrote."""
    src, rebuilt = tmp_path / "src", tmp_path / "rebuilt" / "model.pex"
    shutil.copytree("models/iris/src", src)
    marker = tmp_path / "fail"
    marker.write_text("")
    rebuild = [sys.executable, "-c", f"import os, shutil, sys; os.path.exists({str(marker)!r}) and sys.exit(3); "
               f"shutil.copytree({str(IRIS / 'model.pex')!r}, {str(rebuilt)!r}, symlinks=True)"]
    served = ServedModel(IRIS, tmp_path, "--reload-root", str(src), "--reload-base", str(IRIS / "model.pex"),
                         "--reload-rebuild-file", str(src / "requirements.txt"),
                         "--reload-rebuild-command", json.dumps(rebuild), "--reload-rebuilt-package", str(rebuilt))
    try:
        requirements = src / "requirements.txt"
        requirements.write_text(requirements.read_text() + "\n# a new pin\n")
        until(lambda: '"event": "rebuild_failed"' in served.stderr_path.read_text(), "the failed rebuild is said", served)
        assert "the last good version keeps serving" in served.stderr_path.read_text()
        assert species(served) == "setosa"
        marker.unlink()
        requirements.write_text(requirements.read_text() + "# another\n")
        until(lambda: "serving the new version" in served.stderr_path.read_text(), "the rebuilt package serves", served)
        assert rebuilt.is_dir() and species(served) == "setosa"
    finally:
        assert served.stop() == 0


def test_an_edited_artifact_is_reloaded(tmp_path: Path) -> None:
    """The artifacts overlay the packaged ones: a retrained model is served without a rebuild."""
    src = tmp_path / "src"
    shutil.copytree("models/iris/src", src)
    served = serve_with_reload(IRIS, src, tmp_path)
    try:
        assert species(served) == "setosa"
        # A broken artifact: the new workers fail to load it, so it is read from the overlay
        # (the repository's file), not from the package; the old workers keep serving.
        artifact = src / "artifacts" / "classifier.joblib"
        artifact.write_bytes(b"not a pickle")
        until(lambda: '"event": "reload_failed"' in served.stderr_path.read_text(), "the new artifact is read", served)
        assert species(served) == "setosa"
    finally:
        assert served.stop() == 0


def test_an_r_model_reloads_its_r_file(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree("models/iris_forest/src", src)
    served = serve_with_reload(IRIS_FOREST, src, tmp_path)
    try:
        assert species(served) == "setosa"
        model = src / "model.R"
        text = model.read_text()
        answer = "list(species = names(row)[[which.max(row)]]"
        assert answer in text, "the test edits how the R model names the species"
        model.write_text(text.replace(answer, "list(species = toupper(names(row)[[which.max(row)]])"))
        until(lambda: species(served).isupper(), "the edited R code answers", served)
    finally:
        assert served.stop() == 0
