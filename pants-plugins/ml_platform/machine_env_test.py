import os

from ml_platform.machine_env import ARTIFACTS_DIR, MACHINE_ENV_VARS, machine_id, machine_test_env


def test_machine_bound_tests_get_this_machines_tools_and_its_id() -> None:
    env = machine_test_env()
    assert set(MACHINE_ENV_VARS) <= set(env)
    assert f"ML_TEST_ARTIFACTS={os.getcwd()}/{ARTIFACTS_DIR}" in env
    (machine,) = [e for e in env if e.startswith("ML_TEST_MACHINE=")]
    # Stable on this machine (its results are replayed here), never empty.
    assert machine == f"ML_TEST_MACHINE={machine_id()}" and machine_id() == machine_id() != ""


def test_machines_that_say_they_are_alike_share_an_id(monkeypatch) -> None:
    # CI runners of one image: ML_TEST_MACHINE=`.ci/install-deps --key`.
    monkeypatch.setenv("ML_TEST_MACHINE", "ubuntu24-20261130-01e7cb4d")
    assert machine_id() == "ubuntu24-20261130-01e7cb4d"
    assert "ML_TEST_MACHINE=ubuntu24-20261130-01e7cb4d" in machine_test_env()
    monkeypatch.setenv("ML_TEST_MACHINE", " ")
    assert machine_id().strip() != ""
