"""`LearnedEstimator`: a question's token budget from its text alone, with no model call.

The paper's estimator asks a model for ``[[N]]``: one more call per question, which is pure cost when
the model cannot follow the estimation prompt (a small local model rarely can). A learned estimator
reads the budget off the question instead, in well under a millisecond and with no tokens spent.

The model is a ridge regression of ``log(tokens)`` on two kinds of features, chosen by measurement
(``benchmarks/README.md``, "Learned estimator"; an embedding model scored lower):

- TF-IDF weights of word unigrams and bigrams, with every number written as ``0``;
- the question's shape: its length, how many numbers and sentences it holds, their digits,
  percentages, money, fractions and number words, standardised.

Calibration: a fit keeps the residuals of a k-fold cross-validation, so the estimator predicts a
chosen *quantile* of the tokens a question needs (default the median), not their mean; the policy's
scale α applies on top, and its floor, cap and fallback still hold. Predictions stay inside the range
of targets seen in fitting, so a 50,000-character question cannot produce an absurd number.

Targets come from three places (`TargetKind`): a ``tale search`` file (the model's own optimal
budgets), a data set's reference solutions counted with a named counter, or an evaluation's correct
vanilla answers. Fitting needs numpy; predicting is plain Python and imports nothing heavy.

The file format is JSON (never pickle): the features, the weights, the calibration, and the
provenance (target kind, counter, data hash, fit settings, package version, held-out quality).
"""

from __future__ import annotations

import bisect
import collections
import enum
import functools
import hashlib
import importlib.resources
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .checks import check_int, check_number
from .errors import LearnedEstimatorError
from .estimators import Estimate, _questions
from .files import atomic_write_text
from .generation import Usage

__all__ = [
    "DEFAULT_ESTIMATOR_FILE",
    "FitSettings",
    "LearnedEstimator",
    "LearnedEstimatorError",
    "TargetKind",
    "default_learned_estimator",
    "pairs_from",
    "prediction_quality",
    "question_shape",
]

FORMAT = "tale-learned-estimator"
FORMAT_VERSION = 1
#: The estimator shipped in the package: fitted on GSM8K train's reference solutions (cl100k).
DEFAULT_ESTIMATOR_FILE = "learned_estimator.json"

_NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")
_TOKEN = re.compile(r"[^\W\d_]+|0|[^\w\s]")
_SENTENCE_END = re.compile(r"(?<=[.?!])\s+")
_FRACTION = re.compile(r"\d+\s*/\s*\d+")
_NUMBER_WORDS = re.compile(
    r"\b(?:half|twice|double|triple|third|quarter|thrice|dozen|one|two|three|four|five|six|seven|eight|nine|ten)\b"
)
_MAX_COUNT = 12
_MAX_SENTENCES = 8

#: The names of the shape features, in order (saved in the file so a reader can check them).
SHAPE_FEATURES: tuple[str, ...] = (
    "log_chars", "log_words", "numbers", "log_numbers", "sentences", "log_sentences", "distinct_numbers",
    "decimals", "percents", "dollars", "numbers_per_sentence", "digits", "log_digits", "longest_number",
    "fractions", "number_words", "log_quantities",
    *(f"numbers={k}" for k in range(_MAX_COUNT + 1)),
    *(f"sentences={k}" for k in range(1, _MAX_SENTENCES + 1)),
)


class TargetKind(enum.StrEnum):
    """Where the fitted token counts come from."""

    #: The optimal budgets a ``tale search`` found (model-specific).
    SEARCH = "search"
    #: A data set's reference solutions, counted with a named counter (model-agnostic).
    REFERENCE = "reference"
    #: An evaluation's correct vanilla chain-of-thought answers (model-specific).
    VANILLA_CORRECT = "vanilla-correct"


@dataclass(frozen=True, slots=True, kw_only=True)
class FitSettings:
    """How a `LearnedEstimator` is fitted.

    Attributes:
        ngram: Longest word n-gram (1 or 2 are sensible). Default 2.
        min_df: An n-gram enters the vocabulary when this many questions hold it. Default 3.
        max_features: Vocabulary size cap (most frequent first). Default 5000.
        ridge: The ridge penalty λ. Default 3.0.
        folds: Cross-validation folds for calibration and held-out quality. Default 5.
        seed: Seed of the fold assignment (a hash of the question, so order does not matter). Default 0.
        quantile: The quantile of the needed tokens predicted by default. Default 0.5 (the median).
    """

    ngram: int = 2
    min_df: int = 3
    max_features: int = 5000
    ridge: float = 3.0
    folds: int = 5
    seed: int = 0
    quantile: float = 0.5

    def __post_init__(self) -> None:
        for name, low in (("ngram", 1), ("min_df", 1), ("max_features", 1), ("folds", 2)):
            check_int(f"FitSettings.{name}", getattr(self, name), low=low)
        check_int("FitSettings.seed", self.seed)
        check_number("FitSettings.ridge", self.ridge, above=0)
        _check_quantile(self.quantile, "FitSettings.quantile")

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (round-trips through ``FitSettings(**d)``)."""
        return asdict(self)


def _check_quantile(value: Any, name: str) -> float:
    return float(check_number(name, value, low=0.01, high=0.99))


# -- features: plain Python, shared by fitting and predicting ----------------------------------------


def _words(question: str) -> list[str]:
    return _TOKEN.findall(_NUMBER.sub(" 0 ", question.lower()))


def _ngrams(question: str, n: int) -> list[str]:
    words = _words(question)
    grams = list(words)
    for k in range(2, n + 1):
        grams += [" ".join(words[i:i + k]) for i in range(len(words) - k + 1)]
    return grams


def question_shape(question: str) -> list[float]:
    """The shape features of a question, in the order of `SHAPE_FEATURES`."""
    numbers = _NUMBER.findall(question)
    digits = [len(re.sub(r"\D", "", n)) for n in numbers]
    sentences = [s for s in _SENTENCE_END.split(question.strip()) if s.strip()]
    lower = question.lower()
    n, s = len(numbers), len(sentences)
    number_words = len(_NUMBER_WORDS.findall(lower))
    return [
        math.log1p(len(question)), math.log1p(len(question.split())), float(n), math.log1p(n), float(s),
        math.log1p(s), float(len(set(numbers))), float(sum("." in x for x in numbers)),
        float(question.count("%") + lower.count("percent")), float(question.count("$")), n / max(s, 1),
        float(sum(digits)), math.log1p(sum(digits)), float(max(digits, default=0)),
        float(len(_FRACTION.findall(question))), float(number_words), math.log1p(number_words + n),
        *(1.0 if min(n, _MAX_COUNT) == k else 0.0 for k in range(_MAX_COUNT + 1)),
        *(1.0 if min(s, _MAX_SENTENCES) == k else 0.0 for k in range(1, _MAX_SENTENCES + 1)),
    ]


def _tfidf(question: str, ngram: int, vocabulary: dict[str, int], idf: Sequence[float]) -> dict[int, float]:
    counts = collections.Counter(g for g in _ngrams(question, ngram) if g in vocabulary)
    row = {vocabulary[g]: (1.0 + math.log(c)) * idf[vocabulary[g]] for g, c in counts.items()}
    norm = math.sqrt(sum(v * v for v in row.values()))
    return {i: v / norm for i, v in row.items()} if norm > 0 else {}


# -- quality --------------------------------------------------------------------------------------------


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def _pearson(a: Sequence[float], b: Sequence[float]) -> float | None:
    n = len(a)
    ma, mb = sum(a) / n, sum(b) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b, strict=False))
    va, vb = sum((x - ma) ** 2 for x in a), sum((y - mb) ** 2 for y in b)
    return None if va == 0 or vb == 0 else cov / math.sqrt(va * vb)


def prediction_quality(predicted: Sequence[float], actual: Sequence[float]) -> dict[str, Any]:
    """How well predicted token counts match actual ones.

    Returns:
        ``n``; ``spearman`` (rank correlation; None when either side is constant); ``within_50``
        (share of predictions within ±50% of the actual count); ``median_ratio`` (median of
        predicted / actual).
    """
    if len(predicted) != len(actual) or not actual:
        raise ValueError(f"predicted ({len(predicted)}) and actual ({len(actual)}) must be equal, non-empty lists")
    rho = _pearson(_ranks(list(predicted)), _ranks(list(actual))) if len(actual) > 1 else None
    within = sum(abs(p - a) <= 0.5 * a for p, a in zip(predicted, actual, strict=False)) / len(actual)
    ratios = sorted(p / a for p, a in zip(predicted, actual, strict=False) if a > 0)
    return {
        "n": len(actual),
        "spearman": None if rho is None else round(rho, 4),
        "within_50": round(within, 4),
        "median_ratio": round(ratios[len(ratios) // 2], 4) if ratios else None,
    }


# -- the estimator ---------------------------------------------------------------------------------------


def _sha256_pairs(questions: Sequence[str], targets: Sequence[float]) -> str:
    digest = hashlib.sha256()
    for q, t in zip(questions, targets, strict=False):
        digest.update(json.dumps([q, t], ensure_ascii=False).encode("utf-8") + b"\n")
    return digest.hexdigest()


def _round(value: float) -> float:
    # Seven significant digits: the file stays small and a refit writes the same bytes.
    return float(f"{value:.7g}")


class LearnedEstimator:
    """A budget estimator fitted on (question, tokens) pairs; it makes no model call.

    Build one with `fit`, or `load` a saved file; ``default_learned_estimator()`` (``"learned"`` in
    every integration) is the one shipped in the package, fitted on GSM8K train's reference solutions.

    Args:
        state: The fitted model, as `to_dict` writes it.
        quantile: The quantile of the needed tokens to predict (default: the one it was fitted for).
        name: Name recorded with each budget (default ``"learned"``).
        source: Where it came from, for error messages (a file path).
    """

    def __init__(self, state: dict[str, Any], *, quantile: float | None = None, name: str = "learned",
                 source: str = "<memory>") -> None:
        self.source = source
        self._state = _validated(state, source)
        model = self._state["model"]
        self.settings = FitSettings(**self._state["fit"])
        self.quantile = self.settings.quantile if quantile is None else _check_quantile(quantile, "quantile")
        self.name = name
        self._vocabulary = {g: i for i, g in enumerate(model["vocabulary"])}
        self._idf = model["idf"]
        self._weights = model["weights"]
        self._shape_mean = model["shape_mean"]
        self._shape_scale = model["shape_scale"]
        self._shape_weights = model["shape_weights"]
        self._intercept = model["intercept"]
        low, high = model["target_range"]
        self._log_range = (math.log(low), math.log(high))
        self._offset = _interpolate(self._state["calibration"]["residual_quantiles"], self.quantile)

    # -- reading --------------------------------------------------------------------------------

    @property
    def provenance(self) -> dict[str, Any]:
        """What it was fitted on and how well it did: target, fit settings, version, held-out quality."""
        return {k: self._state[k] for k in ("target", "fit", "package_version", "quality")}

    def _log_prediction(self, question: str) -> float:
        row = _tfidf(question, self.settings.ngram, self._vocabulary, self._idf)
        value = self._intercept + sum(self._weights[i] * v for i, v in row.items())
        for x, mean, scale, w in zip(question_shape(question), self._shape_mean, self._shape_scale,
                                     self._shape_weights, strict=False):
            value += w * (x - mean) / scale
        low, high = self._log_range
        return min(max(value + self._offset, low), high)

    def predict(self, questions: Sequence[str]) -> list[float]:
        """The predicted token count of each question (the chosen quantile), unrounded."""
        out = []
        for q in _questions(questions):
            if not isinstance(q, str):
                raise TypeError(f"questions must be strings, got {type(q).__name__}")
            out.append(math.exp(self._log_prediction(q)))
        return out

    def estimate(self, questions: Sequence[str]) -> list[Estimate]:
        """One `Estimate` per question: the predicted tokens rounded up, with zero usage."""
        return [Estimate(raw=max(1, math.ceil(p)), usage=Usage(counter="none")) for p in self.predict(questions)]

    async def aestimate(self, questions: Sequence[str]) -> list[Estimate]:
        """Async twin of `estimate` (pure computation: it runs inline)."""
        return self.estimate(questions)

    # -- fitting --------------------------------------------------------------------------------

    @classmethod
    def fit(
        cls,
        questions: Sequence[str],
        targets: Sequence[float],
        *,
        target: TargetKind | str,
        counter: str,
        source: str,
        source_sha256: str | None = None,
        settings: FitSettings | None = None,
        name: str = "learned",
    ) -> LearnedEstimator:
        """Fit an estimator on (question, needed tokens) pairs.

        Args:
            questions: The questions.
            targets: The tokens each question needed (positive numbers).
            target: `TargetKind` of the targets (recorded).
            counter: The counter the targets were counted with (recorded), e.g. ``"tiktoken:cl100k_base"``.
            source: Where the pairs came from (recorded), e.g. ``"gsm8k/train.jsonl"``.
            source_sha256: The source file's sha256, when there is one (recorded).
            settings: `FitSettings` (default ``FitSettings()``).
            name: Name recorded with each budget.

        Raises:
            LearnedEstimatorError: Too few pairs, mismatched lengths, or a target that is not positive.
        """
        from ._ridge import fit_state  # numpy, imported only to fit

        settings = settings if settings is not None else FitSettings()
        questions = _questions(questions)
        targets = list(targets)
        if len(questions) != len(targets):
            raise LearnedEstimatorError(f"got {len(questions)} questions but {len(targets)} targets; pass one each")
        if len(questions) < 2 * settings.folds:
            raise LearnedEstimatorError(
                f"fitting needs at least {2 * settings.folds} (question, tokens) pairs for {settings.folds}-fold "
                f"calibration, got {len(questions)}"
            )
        for i, (q, t) in enumerate(zip(questions, targets, strict=False)):
            if not isinstance(q, str) or not q.strip():
                raise LearnedEstimatorError(f"questions[{i}] must be a non-empty string")
            check_number(f"targets[{i}]", t, above=0, hint=" (tokens)", error=LearnedEstimatorError)
        state = fit_state(questions, [float(t) for t in targets], settings, features=_Features)
        state["target"] = {
            "kind": str(TargetKind(target)), "counter": counter, "source": source, "source_sha256": source_sha256,
            "pairs": len(questions), "pairs_sha256": _sha256_pairs(questions, targets),
        }
        return cls(_with_header(state), name=name)

    # -- files ----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The whole fitted state, JSON-serialisable (what `save` writes)."""
        return json.loads(json.dumps(self._state))

    def save(self, path: str | Path) -> Path:
        """Write the estimator as JSON (sorted keys, so the same fit writes the same bytes)."""
        text = json.dumps(self._state, sort_keys=True, ensure_ascii=False, separators=(",", ":")) + "\n"
        return atomic_write_text(path, text)

    @classmethod
    def load(cls, path: str | Path, *, quantile: float | None = None, name: str | None = None) -> LearnedEstimator:
        """Read a file written by `save`.

        Args:
            path: The JSON file (or a folder holding ``learned_estimator.json``).
            quantile: Predict this quantile instead of the fitted default.
            name: Name recorded with each budget (default ``"learned:<file stem>"``, or
                ``"learned:<folder>"`` for a folder).

        Raises:
            LearnedEstimatorError: The file is missing, truncated, corrupted or not a learned estimator.
        """
        path = Path(path)
        label = path.stem
        if path.is_dir():
            label, path = path.name, path / DEFAULT_ESTIMATOR_FILE
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise LearnedEstimatorError(f"no learned estimator file at {path}; fit one with "
                                        "`tale train estimator --out DIR`") from None
        except UnicodeDecodeError as exc:
            raise LearnedEstimatorError(f"{path} is not a learned estimator file (not UTF-8 text: {exc})") from None
        return cls._from_text(text, str(path), quantile=quantile, name=name or f"learned:{label}")

    @classmethod
    def _from_text(cls, text: str, source: str, *, quantile: float | None, name: str) -> LearnedEstimator:
        try:
            state = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LearnedEstimatorError(
                f"{source} is not a learned estimator file: it is not valid JSON (truncated or corrupted? {exc})"
            ) from None
        return cls(state, quantile=quantile, name=name, source=source)

    def __repr__(self) -> str:
        target = self._state["target"]
        return (f"LearnedEstimator(name={self.name!r}, target={target['kind']!r}, counter={target['counter']!r}, "
                f"quantile={self.quantile})")


class _Features:
    """The featurizer handed to the fitting code, so both sides share one definition."""

    shape = staticmethod(question_shape)
    ngrams = staticmethod(_ngrams)
    tfidf = staticmethod(_tfidf)
    names = SHAPE_FEATURES
    round = staticmethod(_round)
    quality = staticmethod(prediction_quality)


def _with_header(state: dict[str, Any]) -> dict[str, Any]:
    from .. import __version__

    return {"format": FORMAT, "format_version": FORMAT_VERSION, "package_version": __version__, **state}


def _interpolate(table: Sequence[Sequence[float]], q: float) -> float:
    levels = [row[0] for row in table]
    i = bisect.bisect_left(levels, q)
    if i == 0:
        return table[0][1]
    if i == len(levels):
        return table[-1][1]
    (q0, v0), (q1, v1) = table[i - 1], table[i]
    return v0 + (v1 - v0) * (q - q0) / (q1 - q0)


def _validated(state: Any, source: str) -> dict[str, Any]:
    def bad(why: str) -> LearnedEstimatorError:
        return LearnedEstimatorError(f"{source} is not a usable learned estimator file: {why}")

    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise bad(f"its 'format' is not {FORMAT!r} (a file of another kind?)")
    if state.get("format_version") != FORMAT_VERSION:
        raise bad(f"format_version {state.get('format_version')!r} is not {FORMAT_VERSION}; refit it with this "
                  "version's `tale train estimator`")
    for key in ("model", "fit", "target", "calibration", "quality", "package_version"):
        if key not in state:
            raise bad(f"the key {key!r} is missing")
    model = state["model"]
    try:
        FitSettings(**state["fit"])
        n, d = len(model["vocabulary"]), len(SHAPE_FEATURES)
        lengths = {"idf": n, "weights": n, "shape_mean": d, "shape_scale": d, "shape_weights": d}
        for key, size in lengths.items():
            values = model[key]
            if len(values) != size or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
                raise bad(f"model.{key} must hold {size} finite numbers")
        if model["shape_features"] != list(SHAPE_FEATURES):
            raise bad("its shape features differ from this version's; refit it with `tale train estimator`")
        if not all(isinstance(g, str) for g in model["vocabulary"]) or len(set(model["vocabulary"])) != n:
            raise bad("model.vocabulary must be distinct strings")
        if any(s <= 0 for s in model["shape_scale"]):
            raise bad("model.shape_scale must be positive")
        low, high = model["target_range"]
        if not 0 < low <= high or not math.isfinite(high):
            raise bad("model.target_range must be two positive numbers, low to high")
        if not isinstance(model["intercept"], (int, float)) or not math.isfinite(model["intercept"]):
            raise bad("model.intercept must be a finite number")
        table = state["calibration"]["residual_quantiles"]
        if not table or any(len(row) != 2 or not all(math.isfinite(v) for v in row) for row in table):
            raise bad("calibration.residual_quantiles must be [quantile, offset] pairs")
        if [row[0] for row in table] != sorted(row[0] for row in table):
            raise bad("calibration.residual_quantiles must be sorted by quantile")
    except LearnedEstimatorError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise bad(f"{type(exc).__name__}: {exc}") from None
    return state


@functools.cache
def _default_text() -> str:
    return importlib.resources.files(__package__).joinpath(DEFAULT_ESTIMATOR_FILE).read_text(encoding="utf-8")


@functools.cache
def _default(quantile: float | None) -> LearnedEstimator:
    return LearnedEstimator._from_text(_default_text(), f"tale_integrations/core/{DEFAULT_ESTIMATOR_FILE}",
                                       quantile=quantile, name="learned")


def default_learned_estimator(*, quantile: float | None = None) -> LearnedEstimator:
    """The estimator shipped in the package (``"learned"``): GSM8K train's reference solutions, cl100k.

    Refit it byte for byte with ``tale train estimator --dataset gsm8k-train --target reference --out DIR``.
    Loaded once and shared (it holds no mutable state).
    """
    return _default(None if quantile is None else _check_quantile(quantile, "quantile"))


def pairs_from(records: Iterable[tuple[str, float]]) -> tuple[list[str], list[float]]:
    """Split (question, tokens) pairs into two lists, keeping the first of repeated questions."""
    seen: dict[str, float] = {}
    for q, t in records:
        seen.setdefault(q, t)
    return list(seen), list(seen.values())
