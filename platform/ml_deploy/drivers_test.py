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
