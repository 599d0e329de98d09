"""`LearnedEstimator`: fitting, calibration, files, edge questions, and the shipped default."""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from pathlib import Path

import pytest

from tale_integrations import BudgetPolicy, FunctionGenerator, TalePipeline
from tale_integrations.core.estimators import BudgetEstimator, FixedEstimator, ZeroShotEstimator, get_estimator
from tale_integrations.core.learned import (
    DEFAULT_ESTIMATOR_FILE,
    FitSettings,
    LearnedEstimator,
    LearnedEstimatorError,
    default_learned_estimator,
    prediction_quality,
)

pytest.importorskip("numpy")  # fitting needs it (predicting does not)

SHIPPED = Path(__file__).resolve().parents[2] / "tale_integrations" / "core" / DEFAULT_ESTIMATOR_FILE
FILLER = ["apples", "trains", "books", "coins", "birds", "cakes", "boxes", "pens", "shoes", "maps"]


def synthetic(n: int, seed: int) -> tuple[list[str], list[float]]:
    """Questions whose needed tokens are 15 per number they hold, times 3 when they say 'percent'."""
    rng = random.Random(seed)
    questions, targets = [], []
    for _ in range(n):
        k = rng.randint(1, 8)
        percent = rng.random() < 0.5
        parts = [f"There are {rng.randint(2, 99)} {rng.choice(FILLER)}." for _ in range(k)]
        if percent:
            parts.append("What percent is left?")
        else:
            parts.append("How many are left?")
        questions.append(" ".join(parts))
        targets.append(15.0 * k * (3 if percent else 1) * math.exp(rng.gauss(0, 0.05)))
    return questions, targets


@pytest.fixture(scope="module")
def fitted() -> LearnedEstimator:
    questions, targets = synthetic(400, seed=1)
    return LearnedEstimator.fit(questions, targets, target="reference", counter="test", source="synthetic",
                                settings=FitSettings(min_df=2, ridge=0.3))


def test_fitting_recovers_a_known_relation(fitted):
    questions, targets = synthetic(200, seed=2)  # new questions
    quality = prediction_quality(fitted.predict(questions), targets)
    assert quality["spearman"] > 0.95
    assert quality["within_50"] > 0.95
    q_low = fitted.predict(["There are 3 apples. How many are left?"])[0]
    q_high = fitted.predict(["There are 3 apples. There are 4 pens. There are 5 maps. There are 6 cakes. "
                             "What percent is left?"])[0]
    assert 8 <= q_low <= 30 < 120 <= q_high <= 300
    # The recorded held-out quality is the cross-validation's, and beats a constant.
    q = fitted.provenance["quality"]
    assert q["estimator"]["within_50"] > q["constant_median"]["within_50"]


def test_quantiles_are_calibrated(fitted):
    questions, targets = synthetic(300, seed=3)
    for quantile in (0.2, 0.5, 0.8):
        est = LearnedEstimator(fitted.to_dict(), quantile=quantile)
        below = sum(p >= t for p, t in zip(est.predict(questions), targets, strict=False)) / len(targets)
        assert abs(below - quantile) < 0.12, (quantile, below)
    low, high = (LearnedEstimator(fitted.to_dict(), quantile=q).estimate(questions) for q in (0.1, 0.9))
    assert all(a.raw <= b.raw for a, b in zip(low, high, strict=False))


def test_estimates_cost_nothing_and_are_async_too(fitted):
    [estimate] = fitted.estimate(["There are 3 apples. How many are left?"])
    assert isinstance(fitted, BudgetEstimator)
    assert estimate.raw >= 1 and estimate.reply == "" and estimate.usage.total_tokens == 0
    import asyncio

    assert asyncio.run(fitted.aestimate(["There are 3 apples. How many are left?"])) == [estimate]


def test_save_and_load_give_identical_budgets(fitted, tmp_path):
    path = fitted.save(tmp_path / "est.json")
    loaded = LearnedEstimator.load(path)
    questions, _ = synthetic(100, seed=4)
    assert loaded.estimate(questions) == fitted.estimate(questions)
    assert loaded.name == "learned:est"
    fitted.save(tmp_path / DEFAULT_ESTIMATOR_FILE)
    assert LearnedEstimator.load(tmp_path).estimate(questions) == fitted.estimate(questions)
    # Saving the same fit twice writes the same bytes.
    again = fitted.save(tmp_path / "again.json")
    assert again.read_bytes() == path.read_bytes()
    assert b"pickle" not in path.read_bytes() and json.loads(path.read_text())["format"] == "tale-learned-estimator"


@pytest.mark.parametrize("damage, message", [
    (lambda text: text[: len(text) // 2], "not valid JSON"),
    (lambda text: "", "not valid JSON"),
    (lambda text: json.dumps({"header": {"kind": "tale-search"}}), "'format' is not"),
    (lambda text: json.dumps([1, 2, 3]), "'format' is not"),
    (lambda text: text.replace('"format_version":1', '"format_version":99'), "format_version 99"),
    (lambda text: text.replace('"intercept":', '"intercept_":'), "KeyError"),
    (lambda text: text.replace('"weights":[', '"weights":[1.0,'), "model.weights must hold"),
    (lambda text: text.replace('"idf":[', '"idf":[NaN,'), "model.idf must hold"),
])
def test_a_damaged_or_foreign_file_is_a_clear_error_naming_it(fitted, tmp_path, damage, message):
    text = (fitted.save(tmp_path / "good.json")).read_text()
    bad = tmp_path / "bad.json"
    bad.write_text(damage(text))
    with pytest.raises(LearnedEstimatorError, match=message) as info:
        LearnedEstimator.load(bad)
    assert str(bad) in str(info.value)


def test_binary_and_missing_files_are_clear_errors(tmp_path):
    bad = tmp_path / "weights.bin"
    bad.write_bytes(b"\x80\x81\xfe\xff" * 100)
    with pytest.raises(LearnedEstimatorError, match="not UTF-8") as info:
        LearnedEstimator.load(bad)
    assert str(bad) in str(info.value)
    with pytest.raises(LearnedEstimatorError, match="tale train estimator"):
        LearnedEstimator.load(tmp_path / "missing.json")


@pytest.mark.parametrize("question", [
    "",
    "x" * 50_000,
    "Tom has 3 apples. " * 2_800,
    "Ein Bauer hat 12 Kühe und kauft 5 weitere. Wie viele Kühe hat er jetzt?",
    "小明有3个苹果，又买了4个。他现在有几个苹果？",
    "1234567890" * 10,
    "7",
])
def test_any_question_gets_a_budget_inside_the_policy(question):
    est = default_learned_estimator()
    [estimate] = est.estimate([question])
    low, high = est.to_dict()["model"]["target_range"]
    assert low <= estimate.raw <= math.ceil(high)
    policy = BudgetPolicy(min_budget=20, max_budget=300)
    budget = policy.resolve(estimate.raw, source=est.name)
    assert 20 <= budget.tokens <= 300


def test_fitting_refuses_bad_pairs():
    with pytest.raises(LearnedEstimatorError, match="2 targets"):
        LearnedEstimator.fit(["a", "b", "c"], [1, 2], target="reference", counter="c", source="s")
    with pytest.raises(LearnedEstimatorError, match="at least 10"):
        LearnedEstimator.fit(["a"] * 3, [1] * 3, target="reference", counter="c", source="s")
    questions, targets = synthetic(20, seed=5)
    with pytest.raises(LearnedEstimatorError, match=r"targets\[3\] must be a positive"):
        LearnedEstimator.fit(questions, [*targets[:3], 0, *targets[4:]], target="reference", counter="c", source="s")
    with pytest.raises(ValueError, match="TargetKind|reference"):
        LearnedEstimator.fit(questions, targets, target="guess", counter="c", source="s")
    with pytest.raises(ValueError, match="FitSettings.quantile"):
        FitSettings(quantile=1.5)
    with pytest.raises(ValueError, match="quantile must be"):
        default_learned_estimator(quantile=0)


def test_get_estimator_reads_every_name(tmp_path, fitted):
    assert get_estimator("learned") is default_learned_estimator()
    assert get_estimator("learned").name == "learned"
    path = fitted.save(tmp_path / "mine.json")
    assert get_estimator(f"learned:{path}").name == "learned:mine"
    assert isinstance(get_estimator("zero-shot", FunctionGenerator(lambda m, **kw: "[[40]]")), ZeroShotEstimator)
    assert get_estimator("fixed:40").estimate(["q"])[0].raw == 40
    fixed = FixedEstimator(9)
    assert get_estimator(fixed) is fixed
    with pytest.raises(ValueError, match="needs a model to ask"):
        get_estimator("zero-shot")
    with pytest.raises(ValueError, match="unknown estimator 'leaned'"):
        get_estimator("leaned")
    with pytest.raises(ValueError, match="fixed:N"):
        get_estimator("fixed:many")
    with pytest.raises(LearnedEstimatorError, match="no learned estimator file"):
        get_estimator(f"learned:{tmp_path / 'nope.json'}")


def test_the_pipeline_takes_the_name_and_spends_no_estimator_tokens():
    answers = FunctionGenerator(lambda messages, **kw: "so [[7]]")
    result = TalePipeline(answers, estimator="learned").invoke("Tom has 3 apples and buys 4 more. How many?")
    assert result.estimator == "learned"
    assert result.estimator_usage.total_tokens == 0
    assert result.total_usage == result.usage + result.estimator_usage
    raw = default_learned_estimator().estimate(["Tom has 3 apples and buys 4 more. How many?"])[0].raw
    assert result.budget.raw == raw


def test_prediction_is_well_under_a_millisecond():
    est = default_learned_estimator()
    questions = [f"Natalia sold {i} clips in April and half as many in May. How many clips did she sell?"
                 for i in range(500)]
    start = time.perf_counter()
    est.estimate(questions)
    per_question = (time.perf_counter() - start) / len(questions)
    assert per_question < 1e-3, f"{1e3 * per_question:.3f} ms per question"


def test_prediction_quality_is_plain_arithmetic():
    q = prediction_quality([10, 20, 30, 40], [12, 18, 45, 100])
    assert q == {"n": 4, "spearman": 1.0, "within_50": 0.75, "median_ratio": 0.8333}  # 40 vs 100 is outside
    assert prediction_quality([5, 5], [1, 2])["spearman"] is None
    with pytest.raises(ValueError):
        prediction_quality([1], [])


# -- the shipped default -------------------------------------------------------------------------------


def data_dir() -> Path:
    root = Path(os.environ.get("TALE_DATA_DIR", Path(__file__).resolve().parents[3] / "shared" / "data"))
    if not (root / "gsm8k" / "train.jsonl").is_file():
        if os.environ.get("TALE_REQUIRE_ALL"):
            pytest.fail(f"GSM8K is missing under {root}")
        pytest.skip(f"GSM8K is not under {root} (set TALE_DATA_DIR)")
    return root


def test_the_shipped_file_records_what_its_refit_command_reads():
    from tale_integrations.training.estimator import reference_pairs

    state = json.loads(SHIPPED.read_text(encoding="utf-8"))
    root = data_dir()
    target = state["target"]
    assert target["kind"] == "reference" and target["counter"] == "tiktoken:cl100k_base"
    assert target["source"] == "gsm8k/train.jsonl"
    assert target["source_sha256"] == hashlib.sha256((root / "gsm8k" / "train.jsonl").read_bytes()).hexdigest()
    pairs = reference_pairs("gsm8k", data_dir=root)
    assert target["pairs"] == len(pairs.questions) == 7473
    from tale_integrations.core.learned import _sha256_pairs

    assert target["pairs_sha256"] == _sha256_pairs(pairs.questions, pairs.targets)
    assert state["fit"] == FitSettings().to_dict()  # the refit command's defaults


def test_the_shipped_estimator_meets_its_quality_bar_on_gsm8k_test():
    from tale_integrations.training.estimator import reference_pairs

    test = reference_pairs("gsm8k-test", data_dir=data_dir())
    quality = prediction_quality(default_learned_estimator().predict(test.questions), test.targets)
    assert quality["n"] == 1319
    assert quality["spearman"] >= 0.65
    assert quality["within_50"] >= 0.85
    constant = prediction_quality([71.0] * 1319, test.targets)
    assert quality["within_50"] > constant["within_50"] + 0.1


@pytest.mark.slow
def test_the_refit_command_rewrites_the_shipped_file_byte_for_byte(tmp_path, capsys):
    from tale_integrations.cli import main

    root = data_dir()
    assert main(["train", "estimator", "--dataset", "gsm8k", "--target", "reference", "--data-dir", str(root),
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Spearman" in out and "constant median" in out
    refit = tmp_path / DEFAULT_ESTIMATOR_FILE
    assert json.loads(refit.read_text())["model"] == json.loads(SHIPPED.read_text())["model"]
    assert refit.read_bytes() == SHIPPED.read_bytes()
