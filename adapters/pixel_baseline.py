"""The baseline without any backbone: logistic regression on raw pixels, the number an adapter must beat.

scikit-learn's `LogisticRegression(C=1.0, max_iter=2000)` on the flattened images scaled to [0, 1],
trained on the same images as the adapters and tested on the same held-out split. lbfgs on a
convex loss is deterministic, so one run stands for every seed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .image_dataset import ImageDataset

PIXEL_C = 1.0  # the baseline's regularisation, scikit-learn's default


@dataclass(frozen=True)
class PixelBaseline:
    test_accuracy: float
    params: int
    seconds: float
    test_hits: tuple[bool, ...]  # whether each test image is classified right, in order


def pixel_features(data: ImageDataset):
    """Each image flattened, scaled to [0, 1]: what the baseline reads."""
    return (data.images.reshape(len(data), -1).float() / 255.0).numpy()


def pixel_logistic_regression(train: ImageDataset, test: ImageDataset) -> PixelBaseline:
    from sklearn.linear_model import LogisticRegression

    began = time.perf_counter()
    model = LogisticRegression(C=PIXEL_C, max_iter=2000).fit(pixel_features(train), train.labels.numpy())
    right = model.predict(pixel_features(test)) == test.labels.numpy()
    return PixelBaseline(float(right.mean()), model.coef_.size + model.intercept_.size, time.perf_counter() - began,
                         tuple(right.tolist()))
