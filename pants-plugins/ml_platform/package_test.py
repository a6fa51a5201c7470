from __future__ import annotations

import json
import subprocess
from pathlib import Path
from textwrap import dedent

import pytest

from ml_contract.runtimes import PYTHON, R
from ml_contract.system_packages import sha256_hex
from ml_platform.package import (
    GENERATED_ENTRYPOINT_MODULE,
    GeneratedArtifacts,
    LockedSystemPackages,
    MLModelFieldSet,
    ResolvedModelHandler,
    SystemPackagesRequest,
)
from pants.core.goals.package import BuiltPackage
from pants.engine.addresses import Address
from pants.engine.internals.scheduler import ExecutionError
from pants.testutil.rule_runner import RuleRunner

MODEL = dedent(
    """\
    from dataclasses import dataclass
    from pathlib import Path


    @dataclass
    class Point:
        x: float
        y: float


    class Model:
        def load(self) -> None:
            self.scale = float((Path(__file__).parent / "artifacts" / "scale.txt").read_text())

        def predict(self, points: list[Point]) -> list[float]:
            return [self.scale * (p.x + p.y) for p in points]
    """
)


def write_model(rule_runner: RuleRunner, build: str) -> None:
    rule_runner.write_files(
        {
            "models/m/model.py": MODEL,
            "models/m/artifacts/scale.txt": "10\n",
            "models/m/BUILD": build,
        }
    )


def field_set(rule_runner: RuleRunner, address: Address) -> MLModelFieldSet:
    return MLModelFieldSet.create(rule_runner.get_target(address))


def test_package_runs_handler_on_json(rule_runner: RuleRunner, tmp_path: Path) -> None:
    write_model(
        rule_runner,
        dedent(
            """\
            python_sources(name="src", resolve="m")
            resources(name="artifacts", sources=["artifacts/*"])
            ml_model(entry_point="model.py:Model", version=2, dependencies=[":artifacts"],
                     env={"MODEL_GREETING": "hi"})
            """
        ),
    )
    address = Address("models/m", target_name="m")
    result = rule_runner.request(BuiltPackage, [field_set(rule_runner, address)])
    assert [a.relpath for a in result.artifacts] == ["models.m/m"]

    # The model PEX carries the model, its artifacts, the runtime and the generated entry point.
    rule_runner.write_digest(result.digest, path_prefix="dist")
    package = Path(rule_runner.build_root, "dist/models.m/m")
    assert (package / "server.pex").is_file()
    pex = package / "model.pex"
    # A packed PEX: a directory whose own files are the code, with each wheel zipped in .deps/.
    assert pex.is_dir()
    names = {str(path.relative_to(pex)) for path in pex.rglob("*") if path.is_file()}
    generated = (pex / f"{GENERATED_ENTRYPOINT_MODULE}.py").read_text()

    # `serve` (the default command) execs the server beside the model PEX, telling it the model
    # and how to start workers in the model's own environment.
    served = subprocess.run([str(pex / "__main__.py"), "--port", "9999"], capture_output=True, text=True)
    assert served.returncode == 0, served.stderr
    server_args = json.loads(served.stdout)
    assert server_args[-2:] == ["--port", "9999"]
    manifest = json.loads(server_args[server_args.index("--manifest") + 1])
    assert manifest["address"] == "models/m:m" and manifest["version"] == 2
    worker = json.loads(server_args[server_args.index("--worker-command") + 1])
    assert worker[1:] == ["-m", GENERATED_ENTRYPOINT_MODULE, "worker"]
    pex_info = json.loads((pex / "PEX-INFO").read_text())
    for expected in (
        "model.py",
        "artifacts/scale.txt",
        "ml_runtime/once.py",
        f"{GENERATED_ENTRYPOINT_MODULE}.py",
    ):
        assert expected in names, f"{expected} missing from {sorted(names)}"

    request = tmp_path / "request.json"
    request.write_text(json.dumps({"points": [{"x": 1, "y": 2}, {"x": 0.5, "y": 0}]}))
    run = subprocess.run([str(pex / "__main__.py"), "once", str(request)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == [30.0, 5.0]

    # Standard input works as well, and a schema violation is a clear input error (exit 2).
    run = subprocess.run(
        [str(pex / "__main__.py"), "once"], input=json.dumps({"points": [{"x": "a", "y": 2}]}), capture_output=True, text=True
    )
    assert run.returncode == 2
    assert "points[0].x: expected a number" in run.stderr

    assert "'handler': 'model:Model'" in generated
    assert "'version': 2" in generated
    assert "'address': 'models/m:m'" in generated
    assert pex_info["entry_point"] == GENERATED_ENTRYPOINT_MODULE
    assert pex_info["inject_env"] == {"MODEL_GREETING": "hi"}
    assert pex_info["venv"] is True


def test_handler_resolves_file_entry_point_to_module(rule_runner: RuleRunner) -> None:
    write_model(
        rule_runner,
        'python_sources(name="src", resolve="m")\nml_model(entry_point="model.py:Model")\n',
    )
    handler = rule_runner.request(
        ResolvedModelHandler, [field_set(rule_runner, Address("models/m", target_name="m"))]
    )
    assert handler == ResolvedModelHandler(PYTHON, "model:Model")


def test_an_r_file_entry_point_is_served_by_the_r_worker(rule_runner: RuleRunner) -> None:
    rule_runner.write_files({
        "models/m/model.R": "endpoints <- list()\n",
        "models/m/BUILD": 'resources(name="r", sources=["model.R"])\nml_model(entry_point="model.R")\n',
    })
    handler = rule_runner.request(ResolvedModelHandler, [field_set(rule_runner, Address("models/m", target_name="m"))])
    assert handler == ResolvedModelHandler(R, "model.R")  # its path at the model's source root


def test_an_r_file_no_resources_target_owns_says_which_to_add(rule_runner: RuleRunner) -> None:
    rule_runner.write_files({"models/m/model.R": "endpoints <- list()\n",
                             "models/m/BUILD": 'ml_model(entry_point="model.R")\n'})
    with pytest.raises(ExecutionError) as excinfo:
        rule_runner.request(ResolvedModelHandler, [field_set(rule_runner, Address("models/m", target_name="m"))])
    message = str(excinfo.value)
    assert "models/m:m" in message and "the R file models/m/model.R" in message
    assert 'resources(name="r", sources=["model.R"])' in message and "models/m/BUILD" in message


BASE_LOCK = '{"distribution": "bookworm", "architecture": "amd64", "packages": [{"name": "libc6"}]}'
PACKAGES = [{"name": "libgl1", "version": "1.6.0-1", "size": 1, "sha256": "0" * 64}]


def system_packages(rule_runner: RuleRunner, lock: "dict | None", packages=("libgl1",),
                    base_image: str = "embedded") -> LockedSystemPackages:
    files = {"platform/ml_image/debian-base.lock.json": BASE_LOCK, "models/m/BUILD": ""}
    if lock is not None:
        files["models/m/system-packages.lock.json"] = json.dumps(lock)
    rule_runner.write_files(files)
    return rule_runner.request(LockedSystemPackages, [
        SystemPackagesRequest(Address("models/m", target_name="m"), tuple(packages), base_image)])


def test_a_current_system_packages_lock_gives_the_layer_its_package_list(rule_runner: RuleRunner) -> None:
    lock = {"distribution": "bookworm", "architecture": "amd64", "roots": ["libgl1"],
            "base_lock_sha256": sha256_hex(BASE_LOCK.encode()), "packages": PACKAGES}
    locked = system_packages(rule_runner, lock)
    assert json.loads(locked.packages_json) == {"distribution": "bookworm", "architecture": "amd64", "packages": PACKAGES}
    assert system_packages(rule_runner, None, packages=()) == LockedSystemPackages("")


@pytest.mark.parametrize("lock, why", [
    (None, "models/m/system-packages.lock.json does not exist"),
    ({"roots": ["ffmpeg"], "base_lock_sha256": sha256_hex(BASE_LOCK.encode())},
     "out of date (it locks ffmpeg, not libgl1)"),
    ({"roots": ["libgl1"], "base_lock_sha256": "1" * 64}, "the base image's lock has changed"),
])
def test_a_missing_or_stale_system_packages_lock_says_how_to_regenerate_it(
        rule_runner: RuleRunner, lock: "dict | None", why: str) -> None:
    with pytest.raises(ExecutionError) as excinfo:
        system_packages(rule_runner, lock)
    message = str(excinfo.value)
    assert why in message
    assert "PYTHONPATH=platform python3 -m ml_image.system_packages models/m libgl1" in message


def test_system_packages_need_the_embedded_base(rule_runner: RuleRunner) -> None:
    with pytest.raises(ExecutionError, match="locked against the embedded base image"):
        system_packages(rule_runner, None, base_image="registry.example/base:1@sha256:" + "a" * 64)


def test_entry_point_without_sources_target(rule_runner: RuleRunner) -> None:
    write_model(rule_runner, 'ml_model(entry_point="model.py:Model")\n')
    with pytest.raises(ExecutionError) as excinfo:
        rule_runner.request(
            ResolvedModelHandler, [field_set(rule_runner, Address("models/m", target_name="m"))]
        )
    message = str(excinfo.value)
    assert "models/m:m" in message
    assert "the module `model`" in message
    assert 'python_sources(resolve="m")' in message


def test_undeclared_resolve_names_the_line_to_add(rule_runner: RuleRunner) -> None:
    rule_runner.write_files(
        {
            "models/newmodel/model.py": MODEL,
            "models/newmodel/BUILD": 'ml_model(entry_point="model.py:Model")\n',
        }
    )
    with pytest.raises(ExecutionError) as excinfo:
        rule_runner.request(
            BuiltPackage,
            [field_set(rule_runner, Address("models/newmodel", target_name="newmodel"))],
        )
    message = str(excinfo.value)
    assert "models/newmodel:newmodel" in message
    assert "pants.toml does not declare it" in message
    assert 'newmodel = "models/newmodel/newmodel.lock"' in message
    assert "--resolve=newmodel" in message


# Writes the artifact the model reads, from a seed: what a script that makes weights too big
# for git does at build time.
SCALE_SCRIPT = dedent(
    """\
    import importlib.util
    import sys
    from pathlib import Path

    out = Path(sys.argv[1]) / "artifacts" / "scale.txt"
    out.parent.mkdir(parents=True)
    out.write_text(str(7 + 3))
    # The platform's runtime stays out of the script's environment (a change to it must not
    # re-run the generation): fail if it is there.
    assert importlib.util.find_spec("ml_runtime") is None, "the runtime is in the script's environment"
    """
)


def test_artifacts_script_output_is_packaged_next_to_the_model(rule_runner: RuleRunner, tmp_path: Path) -> None:
    rule_runner.write_files(
        {
            "models/m/model.py": MODEL,
            "models/m/make_scale.py": SCALE_SCRIPT,
            "models/m/BUILD": dedent(
                """\
                python_sources(name="src", resolve="m")
                ml_model(entry_point="model.py:Model", artifacts_script="make_scale.py")
                """
            ),
        }
    )
    address = Address("models/m", target_name="m")
    generated = rule_runner.request(GeneratedArtifacts, [field_set(rule_runner, address)])
    assert generated.files == ("artifacts/scale.txt",)
    result = rule_runner.request(BuiltPackage, [field_set(rule_runner, address)])
    rule_runner.write_digest(result.digest, path_prefix="dist")
    pex = Path(rule_runner.build_root, "dist/models.m/m/model.pex")
    assert (pex / "artifacts" / "scale.txt").read_text() == "10"
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"points": [{"x": 1, "y": 2}]}))
    run = subprocess.run([str(pex / "__main__.py"), "once", str(request)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == [30.0]


def test_artifacts_script_that_writes_nothing_says_so(rule_runner: RuleRunner) -> None:
    rule_runner.write_files(
        {
            "models/m/model.py": MODEL,
            "models/m/make_scale.py": "print('forgot to write anything')\n",
            "models/m/BUILD": dedent(
                """\
                python_sources(name="src", resolve="m")
                ml_model(entry_point="model.py:Model", artifacts_script="make_scale.py")
                """
            ),
        }
    )
    with pytest.raises(ExecutionError) as excinfo:
        rule_runner.request(GeneratedArtifacts, [field_set(rule_runner, Address("models/m", target_name="m"))])
    message = str(excinfo.value)
    assert "`artifacts_script` of models/m:m (make_scale) wrote nothing" in message
    assert "forgot to write anything" in message
