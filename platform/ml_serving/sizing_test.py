from __future__ import annotations

from pathlib import Path

from ml_contract.model_settings import THREAD_ENV_VARS
from ml_serving.sizing import visible_gpus, worker_env


def test_gpus_come_from_cuda_visible_devices_or_the_devices_present(tmp_path: Path) -> None:
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2,3"}, tmp_path) == ["2", "3"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}, tmp_path) == []
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}, tmp_path) == []
    for name in ("nvidia1", "nvidia0", "nvidiactl", "nvidia-uvm", "null"):
        (tmp_path / name).touch()
    assert visible_gpus({}, tmp_path) == ["0", "1"]
    assert visible_gpus({}, tmp_path / "missing") == []


def test_each_worker_gets_the_thread_count_and_a_gpu_of_its_own() -> None:
    env = worker_env(0, 3, [])
    assert {k: env[k] for k in THREAD_ENV_VARS} == {k: "3" for k in THREAD_ENV_VARS}
    assert "CUDA_VISIBLE_DEVICES" not in env  # a CPU-only host: the model runs on the CPU
    assert [worker_env(i, 1, ["4", "5"])["CUDA_VISIBLE_DEVICES"] for i in range(3)] == ["4", "5", "4"]
