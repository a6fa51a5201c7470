"""Serving handler for the iris species classifier."""

from dataclasses import dataclass

import joblib
import numpy as np

from ml_shared.artifacts import artifact_path


@dataclass
class Flower:
    sepal_length: float  # cm
    sepal_width: float  # cm
    petal_length: float  # cm
    petal_width: float  # cm


# Measurements outside this range are not flowers; rejecting them (a ValueError is a 422 for
# the client) also keeps the model from overflowing into NaN probabilities.
MAX_CM = 100.0


@dataclass
class Prediction:
    species: str  # "setosa", "versicolor" or "virginica"
    probabilities: dict[str, float]  # species -> probability, sums to 1


class Model:
    """Iris species classifier.

    A scikit-learn LogisticRegression trained on the classic Fisher iris data
    set (150 flowers, 3 species). Given the four sepal/petal measurements of a
    flower in centimetres, it returns the most likely species and the
    probability of each species.
    """

    def load(self) -> None:
        # Done here rather than at import so importing the module stays cheap.
        self._clf = joblib.load(artifact_path(__file__, "classifier.joblib"))
        # Trained on species names, so classes_ is the column order of predict_proba.
        self._species = [str(name) for name in self._clf.classes_]

    def predict(self, flowers: list[Flower]) -> list[Prediction]:
        if not flowers:
            return []
        for i, f in enumerate(flowers):
            for name, value in vars(f).items():
                if not 0.0 <= value <= MAX_CM:
                    raise ValueError(f"flowers[{i}].{name} is {value:g} cm; a measurement is 0 to {MAX_CM:g} cm")
        # One batched call: sklearn's per-call overhead dwarfs the math for 4 features.
        x = np.array(
            [[f.sepal_length, f.sepal_width, f.petal_length, f.petal_width] for f in flowers],
            dtype=np.float64,
        )
        probs = self._clf.predict_proba(x)
        return [
            Prediction(
                species=self._species[int(row.argmax())],
                # float() so the runtime's JSON encoder never sees numpy scalars.
                probabilities={name: float(p) for name, p in zip(self._species, row)},
            )
            for row in probs
        ]
