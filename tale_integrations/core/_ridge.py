"""Fitting a `LearnedEstimator` (numpy): vocabulary, ridge regression, k-fold calibration.

Kept apart from `learned.py` so that predicting never imports numpy. The vocabulary, the IDF weights
and the shape standardisation are computed once on every question (they do not look at the targets);
the folds re-solve only the regression, which keeps a fit of 7,473 GSM8K questions to seconds.
"""

from __future__ import annotations

import collections
import hashlib
import math
from collections.abc import Sequence
from typing import Any

__all__ = ["fit_state"]

_QUANTILES = [round(0.01 * k, 2) for k in range(1, 100)]


def _fold(question: str, seed: int, folds: int) -> int:
    digest = hashlib.sha256(f"{seed}\n{question}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % folds


def _solve(x: Any, y: Any, ridge: float) -> tuple[Any, float]:
    import numpy as np

    mean, y_mean = x.mean(axis=0), y.mean()
    centred = x - mean
    gram = centred.T @ centred
    gram[np.diag_indices_from(gram)] += ridge
    weights = np.linalg.solve(gram, centred.T @ (y - y_mean))
    return weights, float(y_mean - mean @ weights)


def fit_state(questions: Sequence[str], targets: Sequence[float], settings: Any, *, features: Any) -> dict:
    """The fitted state of a `LearnedEstimator` (without its file header and target description).

    ``settings`` is a `FitSettings`; ``features`` the estimator's featurizer and quality function, passed in
    so that this module needs nothing from `learned.py` (and the two do not import each other).
    """
    import numpy as np

    grams = [features.ngrams(q, settings.ngram) for q in questions]
    df = collections.Counter(g for row in grams for g in set(row))
    vocabulary = sorted((g for g, c in df.items() if c >= settings.min_df), key=lambda g: (-df[g], g))
    vocabulary = vocabulary[: settings.max_features]
    n = len(questions)
    idf = [features.round(math.log((1 + n) / (1 + df[g])) + 1) for g in vocabulary]
    index = {g: i for i, g in enumerate(vocabulary)}

    shapes = np.array([features.shape(q) for q in questions], dtype=np.float64)
    shape_mean = shapes.mean(axis=0)
    shape_scale = shapes.std(axis=0)
    shape_scale[shape_scale < 1e-9] = 1.0
    shape_mean = np.array([features.round(v) for v in shape_mean])
    shape_scale = np.array([features.round(v) for v in shape_scale])

    x = np.zeros((n, len(vocabulary) + shapes.shape[1]), dtype=np.float64)
    for r, q in enumerate(questions):
        for i, v in features.tfidf(q, settings.ngram, index, idf).items():
            x[r, i] = v
    x[:, len(vocabulary):] = (shapes - shape_mean) / shape_scale
    y = np.log(np.asarray(targets, dtype=np.float64))

    folds = np.array([_fold(q, settings.seed, settings.folds) for q in questions])
    out_of_fold = np.zeros(n)
    for k in range(settings.folds):
        train, held = folds != k, folds == k
        if not held.any() or train.sum() < 2:
            continue
        w, b = _solve(x[train], y[train], settings.ridge)
        out_of_fold[held] = x[held] @ w + b
    residuals = y - out_of_fold
    table = [[q, features.round(float(np.quantile(residuals, q)))] for q in _QUANTILES]

    weights, intercept = _solve(x, y, settings.ridge)
    v = len(vocabulary)
    offset = float(np.interp(settings.quantile, [r[0] for r in table], [r[1] for r in table]))
    actual = [float(t) for t in targets]
    predicted = np.exp(out_of_fold + offset).tolist()
    median = float(np.median(actual))
    quality = {
        "method": f"{settings.folds}-fold cross-validation (seed {settings.seed})",
        "quantile": settings.quantile,
        "estimator": features.quality(predicted, actual),
        "at_median": features.quality(np.exp(out_of_fold + np.median(residuals)).tolist(), actual),
        "constant_median": {**features.quality([median] * n, actual), "value": median},
    }
    return {
        "fit": settings.to_dict(),
        "model": {
            "vocabulary": vocabulary,
            "idf": idf,
            "weights": [features.round(float(w)) for w in weights[:v]],
            "shape_features": list(features.names),
            "shape_mean": shape_mean.tolist(),
            "shape_scale": shape_scale.tolist(),
            "shape_weights": [features.round(float(w)) for w in weights[v:]],
            "intercept": features.round(intercept),
            "target_range": [float(min(actual)), float(max(actual))],
        },
        "calibration": {"residual_quantiles": table},
        "quality": quality,
    }
