from __future__ import annotations

from textwrap import dedent

import pytest

from ml_contract.model_settings import COMPUTE_HELP, LAMBDA_MEMORY_RANGE_MIB, Compute
from ml_platform.target_types import (
    MLModelComputeField,
    MLModelCpuField,
    MLModelEntryPointField,
    MLModelGpuField,
    MLModelMemoryField,
    MLModelResolveField,
    MLModelSystemPackagesField,
    MLModelTarget,
    MLModelTimeoutField,
    MLModelVersionField,
)
from pants.engine.addresses import Address
from pants.engine.internals.scheduler import ExecutionError
from pants.testutil.rule_runner import RuleRunner


@pytest.fixture
def rule_runner() -> RuleRunner:
    # Construction alone validates a target: no rules beyond the engine's own are needed.
    return RuleRunner(target_types=[MLModelTarget])


def model_target(rule_runner: RuleRunner, fields: str, folder: str = "models/m") -> MLModelTarget:
    rule_runner.write_files({f"{folder}/BUILD": f"ml_model({fields})\n"})
    return rule_runner.get_target(Address(folder, target_name=folder.rsplit("/", 1)[-1]))


def assert_invalid(rule_runner: RuleRunner, fields: str, *expected: str) -> None:
    with pytest.raises(ExecutionError) as excinfo:
        model_target(rule_runner, fields)
    message = str(excinfo.value)
    assert "models/m:m" in message
    for fragment in expected:
        assert fragment in message, message


def test_defaults(rule_runner: RuleRunner) -> None:
    tgt = model_target(rule_runner, "entry_point='model.py:Model'", folder="models/iris")
    assert tgt[MLModelResolveField].value == "iris"
    assert tgt[MLModelVersionField].value == 1
    assert tgt[MLModelComputeField].value == "local"
    assert tgt[MLModelGpuField].value == 0
    assert tgt[MLModelTimeoutField].value == 60
    assert tgt[MLModelCpuField].value is None
    entry_point = tgt[MLModelEntryPointField].value
    assert (entry_point.module, entry_point.function) == ("model.py", "Model")


def test_explicit_fields(rule_runner: RuleRunner) -> None:
    tgt = model_target(
        rule_runner,
        dedent(
            """\
            entry_point='pkg.handler:Segmenter', resolve='vision', version=3, compute='fargate',
            cpu=1, memory=4096, timeout=120, env={'OMP_NUM_THREADS': '1'},
            description='a model',
            """
        ),
    )
    assert tgt[MLModelResolveField].value == "vision"
    assert tgt[MLModelVersionField].value == 3
    assert tgt[MLModelCpuField].value == 1.0
    assert tgt[MLModelMemoryField].value == 4096


def test_entry_point_required(rule_runner: RuleRunner) -> None:
    assert_invalid(rule_runner, "", "entry_point")


@pytest.mark.parametrize("entry_point", ["model.py", "model", "model.py:Model.predict"])
def test_entry_point_must_name_a_class(rule_runner: RuleRunner, entry_point: str) -> None:
    assert_invalid(rule_runner, f"entry_point={entry_point!r}", "`entry_point`", "must name a class")


def test_an_r_file_entry_point_is_kept_as_its_path_from_the_build_root(rule_runner: RuleRunner) -> None:
    tgt = model_target(rule_runner, "entry_point='src/model.R', system_packages=['r-cran-glmnet']")
    assert tgt[MLModelEntryPointField].value.module == "models/m/src/model.R"
    assert tgt[MLModelSystemPackagesField].value == ("r-cran-glmnet",)
    assert_invalid(rule_runner, "entry_point='src/model.R:Model'", "names an R file, which has no class")


@pytest.mark.parametrize("name", ["libgl1=1.6", "R-base", "x", "ffmpeg "])
def test_system_packages_must_be_debian_package_names(rule_runner: RuleRunner, name: str) -> None:
    assert_invalid(rule_runner, f"entry_point='model.py:Model', system_packages=[{name!r}]",
                   "`system_packages`", f"holds {name!r}, which is not a Debian package name")


def test_version_must_be_positive(rule_runner: RuleRunner) -> None:
    assert_invalid(rule_runner, "entry_point='model.py:Model', version=0", "'version'", "greater than zero")


def test_unknown_compute(rule_runner: RuleRunner) -> None:
    assert_invalid(
        rule_runner,
        "entry_point='model.py:Model', compute='k8s'",
        "compute",
        "'ec2', 'ecs', 'fargate', 'lambda', 'local'",
        "'k8s'",
    )


@pytest.mark.parametrize("compute", ["lambda", "fargate"])
def test_gpu_not_offered(rule_runner: RuleRunner, compute: str) -> None:
    assert_invalid(
        rule_runner,
        f"entry_point='model.py:Model', compute='{compute}', gpu=1",
        "`gpu`",
        f"{compute} has no GPUs",
        "'ecs' or 'ec2'",
    )


@pytest.mark.parametrize("compute", ["ecs", "ec2", "local"])
def test_gpu_allowed(rule_runner: RuleRunner, compute: str) -> None:
    tgt = model_target(rule_runner, f"entry_point='model.py:Model', compute='{compute}', gpu=2")
    assert tgt[MLModelGpuField].value == 2


def test_negative_gpu(rule_runner: RuleRunner) -> None:
    assert_invalid(rule_runner, "entry_point='model.py:Model', gpu=-1", "'gpu'")


@pytest.mark.parametrize("memory", [127, 10241])
def test_lambda_memory_range(rule_runner: RuleRunner, memory: int) -> None:
    assert_invalid(
        rule_runner,
        f"entry_point='model.py:Model', compute='lambda', memory={memory}",
        "`memory`",
        "128-10240 MiB",
    )


def test_lambda_memory_bounds_are_inclusive(rule_runner: RuleRunner) -> None:
    for memory in (128, 10240):
        tgt = model_target(
            rule_runner, f"entry_point='model.py:Model', compute='lambda', memory={memory}"
        )
        assert tgt[MLModelMemoryField].value == memory


def test_lambda_timeout(rule_runner: RuleRunner) -> None:
    assert_invalid(
        rule_runner,
        "entry_point='model.py:Model', compute='lambda', timeout=901",
        "`timeout`",
        "at most 900",
    )
    tgt = model_target(rule_runner, "entry_point='model.py:Model', compute='lambda', timeout=900")
    assert tgt[MLModelTimeoutField].value == 900


def test_lambda_cpu(rule_runner: RuleRunner) -> None:
    assert_invalid(
        rule_runner, "entry_point='model.py:Model', compute='lambda', cpu=2", "`cpu`", "memory"
    )


@pytest.mark.parametrize(
    "cpu, memory, expected",
    [
        (0.25, 4096, "Allowed with 0.25 vCPU: 512, 1024, 2048 MiB"),
        (1, 1024, "Allowed with 1 vCPU: 2048-8192 in steps of 1024 MiB"),
        (8, 17000, "Allowed with 8 vCPU: 16384-61440 in steps of 4096 MiB"),
    ],
)
def test_fargate_memory_for_cpu(rule_runner: RuleRunner, cpu: float, memory: int, expected: str) -> None:
    assert_invalid(
        rule_runner,
        f"entry_point='model.py:Model', compute='fargate', cpu={cpu}, memory={memory}",
        "`memory`",
        expected,
    )


def test_fargate_cpu(rule_runner: RuleRunner) -> None:
    assert_invalid(
        rule_runner,
        "entry_point='model.py:Model', compute='fargate', cpu=3, memory=8192",
        "`cpu`",
        "3 vCPU, which Fargate does not offer",
        "0.25, 0.5, 1, 2, 4, 8, 16",
    )


def test_fargate_defaults_and_valid_sizes(rule_runner: RuleRunner) -> None:
    model_target(rule_runner, "entry_point='model.py:Model', compute='fargate'")
    for cpu, memory in [(0.25, 512), (0.5, 4096), (4, 30720), (16, 122880)]:
        tgt = model_target(
            rule_runner,
            f"entry_point='model.py:Model', compute='fargate', cpu={cpu}, memory={memory}",
        )
        assert tgt[MLModelMemoryField].value == memory


def test_fargate_size_does_not_constrain_other_compute(rule_runner: RuleRunner) -> None:
    tgt = model_target(rule_runner, "entry_point='model.py:Model', compute='ec2', cpu=3, memory=1000")
    assert tgt[MLModelCpuField].value == 3.0


def test_the_compute_choices_and_their_help_come_from_the_shared_table() -> None:
    # The deploy tools read the same table (platform/ml_deploy/drivers_test.py).
    assert MLModelComputeField.valid_choices is Compute
    for compute in Compute:
        assert f"`{compute.value}` ({COMPUTE_HELP[compute]})" in MLModelComputeField.help
    assert f"within {LAMBDA_MEMORY_RANGE_MIB[0]}-{LAMBDA_MEMORY_RANGE_MIB[1]}" in MLModelMemoryField.help
    assert set(COMPUTE_HELP) == set(Compute)


def test_workers_that_do_not_fit_memory_are_refused_with_the_numbers(rule_runner: RuleRunner) -> None:
    assert_invalid(
        rule_runner,
        "entry_point='model.py:Model', cpu=4, memory=2048, workers=4, worker_memory=900",
        "`workers`",
        "4 worker(s) x 900 MiB = 3600 MiB, more than `memory` (2048 MiB)",
    )


def test_workers_times_threads_may_not_oversubscribe_the_cpus(rule_runner: RuleRunner) -> None:
    assert_invalid(rule_runner, "entry_point='model.py:Model', cpu=2, threads=4", "`threads`",
                   "1 worker(s) x 4 thread(s) = 4 busy cores, but the model has 2 (cpu=2)")


def test_lambdas_limits_are_said_when_the_build_file_is_read(rule_runner: RuleRunner) -> None:
    assert_invalid(rule_runner, "entry_point='model.py:Model', compute='lambda', env={'AWS_REGION': 'x'}",
                   "`env`", "which Lambda sets itself")
    assert_invalid(rule_runner, "entry_point='model.py:Model', compute='lambda', timeout=20, load_timeout=60",
                   "`load_timeout`", "retries the load within the first request's `timeout` (20 s)")
