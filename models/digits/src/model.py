"""Serving handler for the handwritten digit classifier."""

from dataclasses import dataclass

import joblib
import numpy as np
import xgboost as xgb

from ml_shared.artifacts import artifact_path

PIXELS = 64  # 8x8 image, row-major
MAX_GREY = 16.0  # the data set's darkest grey level


@dataclass
class Prediction:
    digit: int  # 0..9
    confidence: float  # probability of `digit`, 0..1


class Model:
    """Handwritten digit classifier.

    Gradient-boosted trees (xgboost) behind a scikit-learn StandardScaler,
    trained on scikit-learn's bundled 8x8 digits data set. Each input image is
    a flat list of 64 grey levels in row-major order, each 0 (white) to 16
    (black); the output is the most likely digit and its probability.
    """

    def load(self) -> None:
        # Done here rather than at import so importing the module stays cheap.
        self._scaler = joblib.load(artifact_path(__file__, "scaler.joblib"))
        self._booster = xgb.Booster()
        self._booster.load_model(artifact_path(__file__, "booster.ubj"))

    def predict(self, images: list[list[float]]) -> list[Prediction]:
        # Validate before numpy: a ragged batch would otherwise surface as an
        # opaque numpy/scaler error without saying which image is wrong.
        # A ValueError is the client's fault to the server: a 422 with this message.
        for i, image in enumerate(images):
            if len(image) != PIXELS:
                raise ValueError(
                    f"image {i} has {len(image)} values; expected {PIXELS} "
                    "(an 8x8 image flattened row-major, values 0..16)"
                )
            if not all(0.0 <= v <= MAX_GREY for v in image):
                raise ValueError(f"image {i} has a value outside 0..{MAX_GREY:g} (grey levels)")
        if not images:
            return []
        x = np.asarray(images, dtype=np.float64)
        # inplace_predict skips building a DMatrix; softprob gives (n, 10) probabilities.
        probs = self._booster.inplace_predict(self._scaler.transform(x))
        digits = probs.argmax(axis=1)
        return [
            # int()/float() so the runtime's JSON encoder never sees numpy scalars.
            Prediction(digit=int(d), confidence=float(p[d]))
            for d, p in zip(digits, probs)
        ]
