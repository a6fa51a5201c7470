"""Train the iris classifier and write artifacts/ and examples.json.

Run from any directory: ``python models/iris/train.py``.
"""

import json
from pathlib import Path

import joblib
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

HERE = Path(__file__).parent
ARTIFACTS = HERE / "artifacts"
SEED = 0
# Order must match the columns of load_iris().data and Flower's fields in model.py.
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def main() -> None:
    iris = load_iris()  # bundled with sklearn, so training never touches the network
    # Fit on species names rather than 0/1/2 so clf.classes_ carries the names
    # and the serving handler needs no separate label mapping.
    species = iris.target_names[iris.target].astype(str)
    x_train, x_test, y_train, y_test = train_test_split(
        iris.data, species, test_size=30, random_state=SEED, stratify=species
    )

    # Logistic regression: deterministic (lbfgs), gives calibrated-ish
    # probabilities, and pickles to ~1 KB.
    clf = LogisticRegression(max_iter=1000, random_state=SEED)
    clf.fit(x_train, y_train)

    accuracy = clf.score(x_test, y_test)
    print(f"held-out accuracy: {accuracy:.4f} ({len(y_test)} samples)")

    ARTIFACTS.mkdir(exist_ok=True)
    joblib.dump(clf, ARTIFACTS / "classifier.joblib")

    examples = {
        "inputs": [
            {name: float(value) for name, value in zip(FEATURES, row)} for row in x_test
        ],
        "labels": [str(label) for label in y_test],
    }
    (HERE / "examples.json").write_text(json.dumps(examples, indent=2) + "\n")


if __name__ == "__main__":
    main()
