from __future__ import annotations

from ml_contract.model_settings import Compute

from ml_deploy import config, drivers


def test_every_compute_of_the_shared_table_has_a_driver_and_an_environment_choice() -> None:
    # The ml_model target's `compute` choices and help come from the same table (target_types_test).
    assert set(drivers.DRIVERS) == set(Compute)
    assert config.COMPUTE_TYPES == tuple(c.value for c in Compute)
    for compute in Compute:
        assert callable(drivers.driver(compute.value).plan)


def test_the_command_line_offers_every_compute(capsys) -> None:
    from ml_deploy.__main__ import main

    try:
        main(["rollback", "--help"])
    except SystemExit:
        pass
    usage = capsys.readouterr().out
    assert "{" + ",".join(c.value for c in Compute) + "}" in usage


def test_the_gateway_build_reaches_the_local_driver_also_when_an_environment_forces_local(
        monkeypatch, tmp_path) -> None:
    # The local driver itself runs for real in local/rollout_test.py; here only the dispatch,
    # with its plan replaced to record what it is handed.
    from pathlib import Path

    from ml_contract.model_settings import ModelSettings
    from ml_deploy.config import Environment
    from ml_deploy.release import Release

    handed = []
    monkeypatch.setattr(drivers.driver("local"), "plan", lambda *args: handed.append(args))
    release = Release(ModelSettings(name="m", compute="lambda"), tmp_path, "sha256:0")
    forced = Environment(name="laptop", compute="local")
    drivers.plan_deploy(release, forced, Path("gateway.pex"))
    ((placed, environment, gateway_pex),) = handed
    assert placed.compute == "local" and environment is forced and gateway_pex == Path("gateway.pex")
