"""Train the wine cultivar classifier (Keras on TensorFlow) and write artifacts/ and examples.json.

Run from any directory, in the model's environment: ``python models/tabular_tf/src/train.py``.
The data set is data/wine.csv (UCI Wine, 178 wines from three cultivars, 13 measurements each),
committed beside this script.
"""

import csv
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

HERE = Path(__file__).parent
SEED = 0
TEST_PER_CULTIVAR = 10


def main() -> None:
    with open(HERE / "data" / "wine.csv", newline="") as f:
        rows = list(csv.reader(f))
    features, rows = rows[0][:-1], rows[1:]
    x = np.array([[float(v) for v in r[:-1]] for r in rows], dtype=np.float32)
    y = np.array([int(r[-1]) for r in rows], dtype=np.int32)

    rng = np.random.default_rng(SEED)
    test = np.concatenate([rng.choice(np.flatnonzero(y == c), TEST_PER_CULTIVAR, replace=False) for c in range(3)])
    train = np.setdiff1d(np.arange(len(y)), test)

    tf.keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()
    normalize = tf.keras.layers.Normalization(name="normalize")
    normalize.adapt(x[train])
    model = tf.keras.Sequential([
        tf.keras.Input(shape=(len(features),), name="measurements"),
        normalize,
        tf.keras.layers.Dense(16, activation="relu"),
        tf.keras.layers.Dense(3, activation="softmax", name="cultivar"),
    ])
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x[train], y[train], epochs=60, batch_size=16, verbose=0, shuffle=True)
    _, accuracy = model.evaluate(x[test], y[test], verbose=0)
    print(f"held-out accuracy: {accuracy:.4f} ({len(test)} samples)")

    (HERE / "artifacts").mkdir(exist_ok=True)
    model.save(HERE / "artifacts" / "wine.keras")
    examples = {
        "inputs": [{name: float(v) for name, v in zip(features, x[i])} for i in test],
        "labels": [int(y[i]) for i in test],
    }
    (HERE / "examples.json").write_text(json.dumps(examples, indent=2) + "\n")


if __name__ == "__main__":
    main()
