from __future__ import annotations

import pytest

from ml_contract.model_settings import DEFAULT_CPU, ModelSettings, SettingError


@pytest.mark.parametrize(
    "settings, setting, fragment",
    [
        (dict(compute="lambda", gpu=1), "gpu", "lambda has no GPUs"),
        (dict(compute="fargate", gpu=1), "gpu", "fargate has no GPUs"),
        (dict(compute="lambda", cpu=1.0), "cpu", "Lambda allots CPU"),
        (dict(compute="lambda", memory=64), "memory", "Lambda allows 128-10240 MiB"),
        (dict(compute="lambda", timeout=901), "timeout", "at most 900 s"),
        (dict(compute="fargate", cpu=3.0), "cpu", "Allowed: 0.25, 0.5, 1, 2, 4, 8, 16"),
        (dict(compute="fargate", cpu=1.0, memory=1024), "memory", "2048-8192 in steps of 1024 MiB"),
        (dict(compute="moon"), "compute", "must be one of local, lambda, fargate, ecs, ec2"),
        (dict(cpu=2.0, workers=2, threads=2), "workers", "2 worker(s) x 2 thread(s) = 4 busy cores, but the model has 2"),
        (dict(cpu=1.0, threads=2), "threads", "1 worker(s) x 2 thread(s) = 2 busy cores"),
        (dict(cpu=4.0, memory=2048, worker_memory=800), "worker_memory",
         "4 worker(s) x 800 MiB = 3200 MiB, more than `memory` (2048 MiB)"),
        (dict(cpu=4.0, memory=2048, workers=3, worker_memory=800), "workers", "raise `memory` to at least 2400"),
        (dict(compute="lambda", workers=2), "workers", "Lambda sends one request at a time"),
        (dict(workers=0), "workers", "must be at least 1"),
        (dict(secrets=("api-key",)), "secrets", "upper-case letters, digits and _"),
        (dict(secrets=("AWS_SECRET_ACCESS_KEY",)), "secrets", "not starting with ML_, AWS_, LAMBDA_"),
        (dict(secrets=("KEY",), env={"KEY": "x"}), "secrets", "which `env` sets too"),
        # Scaling, declared per model.
        (dict(compute="ec2", max_replicas=3), "max_replicas", "applies to fargate and ecs only, not ec2"),
        (dict(compute="lambda", min_replicas=2), "min_replicas", "Lambda scales by itself"),
        (dict(compute="fargate", min_replicas=0), "min_replicas", "For scale to zero use compute='lambda'"),
        (dict(compute="ecs", min_replicas=3, max_replicas=2), "max_replicas", "below min_replicas (3)"),
        (dict(compute="ecs", max_replicas=4), "max_replicas", "set exactly one of `target_requests`"),
        (dict(compute="ecs", max_replicas=4, target_requests=100, target_cpu=50), "max_replicas", "exactly one"),
        (dict(compute="ecs", target_cpu=50), "target_cpu", "has nothing to scale"),
        (dict(compute="ecs", max_replicas=4, target_cpu=150), "target_cpu", "a percentage, 1-100"),
        (dict(compute="fargate", reserved_concurrency=5), "reserved_concurrency", "applies to lambda only"),
        (dict(compute="lambda", reserved_concurrency=2, provisioned_concurrency=3), "provisioned_concurrency",
         "more than reserved_concurrency (2)"),
        # Lambda's limits, said when the BUILD file is read rather than by AWS at deploy time.
        (dict(compute="lambda", env={"AWS_REGION": "eu-west-1"}), "env", "AWS_REGION, which Lambda sets itself"),
        (dict(compute="lambda", env={"_HANDLER": "x"}), "env", "which Lambda sets itself"),
        (dict(compute="lambda", env={"PROMPT": "x" * 3100}), "env",
         "holds 3,106 bytes of names and values, but Lambda allows 4,096"),
        (dict(compute="lambda", timeout=30, load_timeout=120), "load_timeout",
         "Lambda gives a cold start 10 s to load, then retries the load within the first request's `timeout` (30 s)"),
    ],
)
def test_each_compute_rule_names_the_setting(settings: dict, setting: str, fragment: str) -> None:
    with pytest.raises(SettingError) as raised:
        ModelSettings(name="m", **settings).check()
    assert raised.value.setting == setting and fragment in raised.value.message


def test_defaults_are_valid_on_every_compute_and_survive_json() -> None:
    for compute in ("local", "lambda", "fargate", "ecs", "ec2"):
        ModelSettings(name="m", compute=compute).check()
    settings = ModelSettings(name="m", compute="ecs", gpu=1, env={"A": "1"})
    assert ModelSettings.from_json(settings.to_json()) == settings
    assert settings.effective_cpu == DEFAULT_CPU
    with pytest.raises(ValueError, match="unknown model settings"):
        ModelSettings.from_dict({"name": "m", "replicas": 3})


@pytest.mark.parametrize("settings, workers, threads", [
    (dict(), 1, 1),  # cpu 0.5: one worker on one core
    (dict(cpu=4.0), 4, 1),  # one single-threaded worker per core
    (dict(cpu=4.0, threads=2), 2, 2),  # e.g. torch: fewer workers, each with more threads
    (dict(cpu=4.0, workers=1), 1, 4),  # one copy of a big model, all the cores for it
    (dict(compute="ecs", cpu=8.0, gpu=2), 2, 4),  # one worker per GPU
    (dict(compute="lambda", memory=4096), 1, 2),  # Lambda: one worker, the vCPUs memory brings
])
def test_workers_and_threads_come_from_the_declared_cpu_and_gpu(settings: dict, workers: int, threads: int) -> None:
    model = ModelSettings(name="m", **settings)
    model.check()
    assert (model.effective_workers, model.effective_threads) == (workers, threads)



def test_secrets_round_trip_through_json() -> None:
    settings = ModelSettings(name="m", secrets=("API_KEY", "DB_PASSWORD"))
    assert ModelSettings.from_json(settings.to_json()) == settings


def test_the_load_timeout_on_lambda_is_the_requests_timeout() -> None:
    assert ModelSettings(name="m", compute="lambda", timeout=45).effective_load_timeout == 45
    assert ModelSettings(name="m", compute="lambda", timeout=5, load_timeout=10).effective_load_timeout == 10
    assert ModelSettings(name="m", compute="ecs").effective_load_timeout == 180
    ModelSettings(name="m", compute="lambda", env={"AWS_MAX_ATTEMPTS": "3", "PROMPT": "x" * 3000}).check()
