"""The TensorFlow model (models/tabular_tf) served for real: right on its held-out wines, through
its REST route and the Open Inference Protocol, with TensorFlow imported once per worker at
load, never per request."""

from __future__ import annotations

import json
from pathlib import Path

from integration.served_model import ServedModel

PACKAGE = Path("models.tabular_tf/tabular_tf")
EXAMPLES = json.loads(Path("models/tabular_tf/src/examples.json").read_text())


def test_tabular_tf_answers_and_loads_tensorflow_once(tmp_path: Path) -> None:
    served = ServedModel(PACKAGE, tmp_path, "--workers", "1", start_timeout=180)
    try:
        for _ in range(10):  # requests after the first pay no import
            status, _, answers = served.request("POST", "/v1/predict", {"wines": EXAMPLES["inputs"]})
            assert status == 200
            correct = sum(a["cultivar"] == label for a, label in zip(answers, EXAMPLES["labels"]))
            assert correct >= 0.9 * len(EXAMPLES["labels"])
            assert all(abs(sum(a["probabilities"]) - 1) < 1e-5 for a in answers)
        wine = EXAMPLES["inputs"][0]
        status, _, infer = served.request("POST", "/v2/models/tabular_tf/infer", {"inputs": [
            {"name": "wines", "shape": [1, 13], "datatype": "FP32", "data": list(wine.values())}]})
        assert status == 200 and infer["outputs"][0]["data"] == [answers[0]["cultivar"]]
        status, _, refused = served.request("POST", "/v1/predict", {"wines": [{**wine, "proline": -1.0}]})
        assert status == 422 and "wines[0].proline is -1" in refused["detail"]
    finally:
        assert served.stop() == 0
    log = served.stdout_path.read_text() + served.stderr_path.read_text()
    # One worker loaded TensorFlow once, whatever the number of requests.
    assert log.count("tabular_tf: TensorFlow 2.21.0 loaded in") == 1, log[-3000:]
    assert log.count('"event": "worker_ready"') == 1
