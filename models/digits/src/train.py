"""Train the digits classifier and write artifacts/ and examples.json.

Run from any directory: ``python models/digits/train.py``.
"""

import json
from pathlib import Path

import joblib
import xgboost as xgb
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

HERE = Path(__file__).parent
ARTIFACTS = HERE / "artifacts"
SEED = 0
N_EXAMPLES = 50

# Small on purpose: keeps booster.ubj a few hundred KB while still > 0.9 accurate.
XGB_PARAMS = {
    "objective": "multi:softprob",  # per-class probabilities -> confidence at serving time
    "num_class": 10,
    "max_depth": 4,
    "eta": 0.3,
    "tree_method": "hist",
    "seed": SEED,
    # Histogram sums are split across threads, so the float rounding (and the
    # saved bytes) depend on the thread count; one thread makes retraining
    # byte-identical on any machine, and training still takes about a second.
    "nthread": 1,
}
NUM_ROUNDS = 40


def main() -> None:
    digits = load_digits()  # bundled with sklearn (8x8 images, 0..16), no network needed
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data, digits.target, test_size=0.2, random_state=SEED, stratify=digits.target
    )

    # Trees don't need scaling; the scaler is here so the serving path carries a
    # scikit-learn artifact next to the xgboost one, like a real feature pipeline.
    scaler = StandardScaler().fit(x_train)
    dtrain = xgb.DMatrix(scaler.transform(x_train), label=y_train)
    booster = xgb.train(XGB_PARAMS, dtrain, num_boost_round=NUM_ROUNDS)

    probs = booster.inplace_predict(scaler.transform(x_test))
    accuracy = float((probs.argmax(axis=1) == y_test).mean())
    print(f"held-out accuracy: {accuracy:.4f} ({len(y_test)} samples)")

    ARTIFACTS.mkdir(exist_ok=True)
    joblib.dump(scaler, ARTIFACTS / "scaler.joblib")
    # xgboost's own format rather than pickle: it is stable across xgboost
    # versions and doesn't execute code on load.
    booster.save_model(ARTIFACTS / "booster.ubj")

    examples = {
        "inputs": [[float(v) for v in row] for row in x_test[:N_EXAMPLES]],
        "labels": [int(label) for label in y_test[:N_EXAMPLES]],
    }
    # One image per line keeps the file diffable without being 3000 lines long.
    lines = ",\n    ".join(json.dumps(row) for row in examples["inputs"])
    (HERE / "examples.json").write_text(
        '{\n  "inputs": [\n    ' + lines + "\n  ],\n"
        f'  "labels": {json.dumps(examples["labels"])}\n}}\n'
    )


if __name__ == "__main__":
    main()
