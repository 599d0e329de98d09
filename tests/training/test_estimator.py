"""Fitting data for the learned estimator, and ``tale train estimator`` on each of its three sources."""

from __future__ import annotations

import json

import pytest

from tale_integrations.cli import main
from tale_integrations.core.learned import DEFAULT_ESTIMATOR_FILE, LearnedEstimator, LearnedEstimatorError
from tale_integrations.training.estimator import (
    reference_pairs,
    reference_solution,
    search_pairs,
    vanilla_correct_pairs,
)

pytest.importorskip("numpy")


def gsm8k_rows(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        steps = "\n".join(f"Step {k}: {i} + {k} = <<{i}+{k}={i + k}>>{i + k} apples." for k in range(1 + i % 6))
        rows.append({"question": f"Tom has {i} apples and {i % 6} baskets. How many apples?",
                     "answer": f"{steps}\n#### {i}"})
    return rows


def test_reference_solutions_drop_calculator_annotations():
    assert reference_solution("48/2 = <<48/2=24>>24 clips.\n#### 24") == "48/2 = 24 clips.\n#### 24"


def test_reference_pairs_count_each_solution(write_questions, tmp_path):
    path = write_questions(tmp_path / "mine.jsonl", gsm8k_rows(30))
    pairs = reference_pairs(str(path))
    assert len(pairs.questions) == 30 and pairs.kind == "reference" and pairs.counter == "tiktoken:cl100k_base"
    assert pairs.targets[5] > pairs.targets[0]  # six steps against one
    assert pairs.source == "mine.jsonl" and len(pairs.source_sha256) == 64


def test_reference_pairs_refuse_a_data_set_without_worked_solutions(write_questions, tmp_path):
    path = write_questions(tmp_path / "zero.jsonl", [{"question": "Q?", "answer": 4.0}])
    with pytest.raises(LearnedEstimatorError, match="no reference solutions"):
        reference_pairs(str(path))


def test_search_pairs_keep_found_budgets_only(write_search, make_record, tmp_path):
    records = [make_record(f"q{i}", budget=10 + i, question=f"What is {i} plus {i}?") for i in range(12)]
    records += [make_record("hard", status="vanilla_wrong")]
    pairs = search_pairs(write_search(tmp_path / "s.jsonl", records))
    assert pairs.kind == "search" and len(pairs.questions) == 12 and pairs.targets[3] == 13.0
    with pytest.raises(LearnedEstimatorError, match="no question with a found budget"):
        search_pairs(write_search(tmp_path / "none.jsonl", [make_record("hard", status="vanilla_wrong")]))


def eval_results(path, rows, method="vanilla"):
    header = {"header": {"kind": "tale-eval", "dataset": "d", "method": method, "model": "m"}}
    path.write_text("\n".join(json.dumps(r) for r in [header, *rows]) + "\n", encoding="utf-8")
    return path


def test_vanilla_correct_pairs_take_correct_finished_answers(tmp_path):
    rows = [{"id": str(i), "question": f"Q{i}?", "correct": i % 3 != 0, "text": "so " * (i + 1), "output_tokens": i + 1,
             "finish_reason": "length" if i == 4 else "stop", "counter": "hf:m"} for i in range(12)]
    pairs = vanilla_correct_pairs(eval_results(tmp_path / "r.jsonl", rows))
    assert pairs.questions == [f"Q{i}?" for i in (1, 2, 5, 7, 8, 10, 11)]
    assert pairs.targets[0] == 2.0 and pairs.counter == "hf:m" and pairs.kind == "vanilla-correct"
    recounted = vanilla_correct_pairs(tmp_path / "r.jsonl", counter="cl100k_base")
    from tale_integrations.core.tokens import get_counter

    assert recounted.counter == "tiktoken:cl100k_base"
    assert recounted.targets[0] == get_counter("cl100k_base").count("so so ") != 2
    with pytest.raises(LearnedEstimatorError, match="not the results file of a vanilla method"):
        vanilla_correct_pairs(eval_results(tmp_path / "t.jsonl", rows, method="tale-ep"))


def test_tale_train_estimator_from_a_data_set(write_questions, tmp_path, capsys):
    path = write_questions(tmp_path / "mine.jsonl", gsm8k_rows(40))
    out = tmp_path / "est"
    assert main(["train", "estimator", "--dataset", str(path), "--out", str(out), "--min-df", "2",
                 "--quantile", "0.8"]) == 0
    printed = capsys.readouterr().out
    assert "learned estimator:  Spearman" in printed and "constant median:" in printed
    estimator = LearnedEstimator.load(out)
    assert estimator.quantile == 0.8 and estimator.provenance["fit"]["min_df"] == 2
    assert estimator.provenance["target"]["source"] == "mine.jsonl"
    # The fitted file is what --estimator learned:PATH reads.
    assert (out / DEFAULT_ESTIMATOR_FILE).is_file()


def test_tale_train_estimator_from_a_search_file_and_from_results(write_search, make_record, tmp_path, capsys):
    records = [make_record(f"q{i}", budget=10 + 5 * (i % 4), question=f"What is {i} plus {i % 4}?") for i in range(20)]
    search = write_search(tmp_path / "s.jsonl", records)
    assert main(["train", "estimator", "--search-file", str(search), "--out", str(tmp_path / "a"),
                 "--min-df", "1"]) == 0
    assert LearnedEstimator.load(tmp_path / "a").provenance["target"]["kind"] == "search"
    rows = [{"id": str(i), "question": f"Q{i} has {i} parts?", "correct": True, "text": "x", "output_tokens": 5 + i,
             "finish_reason": "stop", "counter": "hf:m"} for i in range(12)]
    results = eval_results(tmp_path / "r.jsonl", rows)
    assert main(["train", "estimator", "--results", str(results), "--out", str(tmp_path / "b"), "--min-df", "1"]) == 0
    assert LearnedEstimator.load(tmp_path / "b").provenance["target"]["kind"] == "vanilla-correct"
    capsys.readouterr()


def test_tale_train_estimator_vanilla_correct_runs_the_model(tiny_model_dir, write_questions, tmp_path, capsys,
                                                              monkeypatch):
    # A random tiny model is never correct: the command runs the vanilla evaluation, then says so clearly.
    path = write_questions(tmp_path / "mine.jsonl", gsm8k_rows(3))
    assert main(["train", "estimator", "--dataset", str(path), "--target", "vanilla-correct", "--model",
                 str(tiny_model_dir), "--max-tokens", "4", "--out", str(tmp_path / "v")]) == 2
    err = capsys.readouterr().err
    assert "no correct, finished answer to fit on (3 results)" in err
    assert list((tmp_path / "v" / "vanilla").rglob("*.jsonl"))  # the run is kept, to resume


@pytest.mark.parametrize("args, message", [
    (["--search-file", "s.jsonl", "--target", "vanilla-correct"], "--target applies to --dataset only"),
    (["--results", "r.jsonl", "--model", "m"], "--model and --limit apply"),
    (["--dataset", "nowhere"], "neither a known name"),
])
def test_tale_train_estimator_bad_arguments(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "estimator", *args, "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err
