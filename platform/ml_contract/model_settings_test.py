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
