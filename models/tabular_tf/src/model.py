"""Serving handler for the wine cultivar classifier (Keras on TensorFlow, CPU)."""

import os
import time
from dataclasses import dataclass

from ml_shared.artifacts import artifact_path


@dataclass
class Wine:
    """The 13 chemical measurements of a wine (UCI Wine data set)."""

    alcohol: float  # % vol
    malic_acid: float  # g/l
    ash: float  # g/l
    alcalinity_of_ash: float
    magnesium: float  # mg/l
    total_phenols: float
    flavanoids: float
    nonflavanoid_phenols: float
    proanthocyanins: float
    color_intensity: float
    hue: float
    od280_od315: float  # OD280/OD315 of diluted wines
    proline: float  # mg/l


@dataclass
class Cultivar:
    cultivar: int  # 0, 1 or 2
    probabilities: list[float]  # per cultivar, sums to 1


# No measurement of a wine is negative or above this; refusing the rest (a 422) keeps the
# network's inputs in the range it was trained on.
MAX_MEASUREMENT = 10_000.0
FEATURES = list(Wine.__dataclass_fields__)


class Model:
    """Wine cultivar classifier: a small Keras network (normalisation, 16 ReLU units, softmax)
    trained on the UCI Wine data set; given a wine's 13 measurements, the cultivar it most
    likely comes from and the probability of each."""

    def load(self) -> None:
        # TensorFlow's import (6-10 s) and graph building are paid here, once per worker.
        started = time.monotonic()
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import numpy as np
        import tensorflow as tf

        threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        self._np = np
        keras_model = tf.keras.models.load_model(artifact_path(__file__, "wine.keras"))
        # A traced function: keras' predict() sets up a dataset per call (milliseconds); one
        # concrete function for any batch size costs microseconds. Traced now, not on the
        # first request.
        self._forward = tf.function(
            lambda x: keras_model(x, training=False),
            input_signature=[tf.TensorSpec([None, len(FEATURES)], tf.float32)],
        )
        self._forward(np.zeros((1, len(FEATURES)), np.float32))
        print(f"tabular_tf: TensorFlow {tf.__version__} loaded in {time.monotonic() - started:.1f} s", flush=True)

    def predict(self, wines: list[Wine]) -> list[Cultivar]:
        if not wines:
            return []
        for i, wine in enumerate(wines):
            for name, value in vars(wine).items():
                if not 0.0 <= value <= MAX_MEASUREMENT:
                    raise ValueError(f"wines[{i}].{name} is {value:g}; a measurement is 0 to {MAX_MEASUREMENT:g}")
        x = self._np.array([[getattr(w, name) for name in FEATURES] for w in wines], dtype=self._np.float32)
        probabilities = self._forward(x).numpy()
        return [Cultivar(int(row.argmax()), [float(p) for p in row]) for row in probabilities]
