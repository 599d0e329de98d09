"""tale_integrations.eval.datasets: built-in sets, field maps, malformed lines, the hub path's errors."""

from __future__ import annotations

import sys
import types

import pytest

from tale_integrations.core.answers import AnswerKind
from tale_integrations.core.prompts import QuestionFormat
from tale_integrations.eval.datasets import (
    AnswerFormat,
    DatasetError,
    FieldMap,
    data_dir,
    load_dataset,
)


def test_gsm8k_gold_is_the_number_after_the_marker(data_dir):
    ds = load_dataset("gsm8k", root=data_dir, limit=2)
    assert [ex.gold for ex in ds.examples] == ["18", "3"]
    assert [ex.id for ex in ds.examples] == ["gsm8k:1", "gsm8k:2"]
    assert ds.examples[0].question.startswith("Janet\u2019s ducks lay 16 eggs")
    assert ds.examples[0].kind is AnswerKind.NUMERIC and ds.format is QuestionFormat.GSM8K
    assert ds.malformed == ()


def test_gsm8k_zero_float_golds_become_integer_strings(data_dir):
    ds = load_dataset("gsm8k-zero", root=data_dir, limit=3)
    assert [ex.gold for ex in ds.examples] == ["48", "50", "100"]
    assert ds.examples[2].id == "gsm8k-zero:3" and ds.examples[2].line == 3


def test_mathbench_arithmetic_keeps_string_golds(data_dir):
    ds = load_dataset("mathbench-arithmetic", root=data_dir, limit=2)
    assert [ex.gold for ex in ds.examples] == ["-35947632.9663", "-11"]


def test_mathbench_middle_is_multiple_choice(data_dir):
    ds = load_dataset("mathbench-middle", root=data_dir, limit=2)
    first = ds.examples[0]
    assert first.options == ("6", "-10", "-6", "10") and first.gold == "B"
    assert first.kind is AnswerKind.CHOICE and first.format is QuestionFormat.MULTIPLE_CHOICE
    assert ds.format is QuestionFormat.MULTIPLE_CHOICE
    assert ds.examples[1].gold == "A"


def test_builtin_names_read_tale_data_dir(tmp_path, monkeypatch, write_jsonl):
    write_jsonl(tmp_path / "gsm8k_zero" / "test.jsonl", [{"question": "Q?", "answer": 2.5}])
    monkeypatch.setenv("TALE_DATA_DIR", str(tmp_path))
    assert data_dir() == tmp_path
    ds = load_dataset("gsm8k-zero")
    assert ds.examples[0].gold == "2.5" and ds.source == str(tmp_path / "gsm8k_zero" / "test.jsonl")


def test_default_data_dir_is_beside_the_project(monkeypatch):
    monkeypatch.delenv("TALE_DATA_DIR", raising=False)
    assert data_dir().parts[-2:] == ("shared", "data")


def test_missing_builtin_file_names_the_env_var(tmp_path):
    with pytest.raises(DatasetError, match="TALE_DATA_DIR"):
        load_dataset("gsm8k", root=tmp_path)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(DatasetError, match="gsm8k-zero"):
        load_dataset("not-a-dataset")


def test_malformed_lines_are_counted_with_line_numbers_and_reasons(tmp_path, write_jsonl):
    path = write_jsonl(tmp_path / "mixed.jsonl", [
        {"question": "good one", "answer": 1},    # 1
        "{not json",                               # 2
        "[1, 2]",                                  # 3
        {"answer": 3},                             # 4: no question
        {"question": "  ", "answer": 3},           # 5: empty question
        {"question": "no answer"},                 # 6
        "",                                        # 7: blank, ignored
        {"question": "bad answer", "answer": [1]}, # 8
        {"question": "good two", "answer": "1,000"},  # 9
    ])
    ds = load_dataset(str(path))
    assert [(ex.id, ex.gold) for ex in ds.examples] == [("mixed:1", "1"), ("mixed:9", "1000")]
    assert [m.line for m in ds.malformed] == [2, 3, 4, 5, 6, 8]
    reasons = [m.reason for m in ds.malformed]
    assert "not valid JSON" in reasons[0]
    assert "expected a JSON object" in reasons[1]
    assert "'question'" in reasons[2] and "'question'" in reasons[3]
    assert "'answer' is missing" in reasons[4]
    assert "bad answer" in reasons[5]
    note = ds.describe_malformed(limit=2)
    assert note.startswith("mixed: skipped 6 malformed line(s)") and "line 2:" in note and "and 4 more" in note
    assert ds.to_dict()["malformed"][0]["line"] == 2


def test_limit_counts_valid_examples_only(tmp_path, write_jsonl):
    path = write_jsonl(tmp_path / "x.jsonl", ["oops", {"question": "a", "answer": 1}, {"question": "b", "answer": 2},
                                              {"question": "c", "answer": 3}])
    ds = load_dataset(str(path), limit=2)
    assert [ex.question for ex in ds.examples] == ["a", "b"]
    assert [m.line for m in ds.malformed] == [1]


def test_field_mapping_for_any_jsonl(tmp_path, write_jsonl):
    path = write_jsonl(tmp_path / "quiz.jsonl", [
        {"problem": "2+2?", "choices": ["3", "4"], "target": 1},
        {"problem": "3+3?", "choices": ["6", "7"], "target": "a"},
        {"problem": "bad", "choices": ["6", "7"], "target": "C"},
        {"problem": "bad", "choices": "67", "target": "A"},
    ])
    ds = load_dataset(str(path), fields="question=problem,answer=target,options=choices,format=choice", name="quiz")
    assert [(ex.id, ex.gold, ex.options) for ex in ds.examples] == [
        ("quiz:1", "B", ("3", "4")), ("quiz:2", "A", ("6", "7"))]
    assert [m.line for m in ds.malformed] == [3, 4]
    assert "'AB'" in ds.malformed[0].reason and "'choices'" in ds.malformed[1].reason


def test_gsm8k_answer_format_and_name_guess(tmp_path, write_jsonl):
    path = write_jsonl(tmp_path / "gsm8k" / "test.jsonl", [{"question": "q", "answer": "work\n#### 1,234"},
                                                           {"question": "q", "answer": "no marker"}])
    ds = load_dataset(str(path))
    assert ds.name == "gsm8k-test" and ds.fields.answer_format is AnswerFormat.GSM8K
    assert ds.examples[0].gold == "1234"
    assert "'####'" in ds.malformed[0].reason


def test_field_map_parse_errors():
    assert FieldMap.parse("question=q, answer=a").question == "q"
    with pytest.raises(DatasetError, match="KEY=VALUE"):
        FieldMap.parse("question")
    with pytest.raises(DatasetError, match="KEY=VALUE"):
        FieldMap.parse("colour=blue")
    with pytest.raises(DatasetError, match="numeric, gsm8k, choice"):
        FieldMap.parse("format=essay")
    with pytest.raises(DatasetError, match="options field"):
        FieldMap(answer_format="choice")


def test_bad_limit_and_spec():
    with pytest.raises(DatasetError, match="limit"):
        load_dataset("gsm8k", limit=0)
    with pytest.raises(DatasetError):
        load_dataset("  ")


def test_hub_without_the_datasets_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DatasetError, match="pip install datasets"):
        load_dataset("hub:openai/gsm8k:main:test")


def test_hub_offline_gives_a_clear_error(monkeypatch):
    fake = types.ModuleType("datasets")

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub (LocalEntryNotFoundError)")

    fake.load_dataset = offline
    monkeypatch.setitem(sys.modules, "datasets", fake)
    with pytest.raises(DatasetError, match="could not load 'hub:openai/gsm8k:main:test'.*connection"):
        load_dataset("hub:openai/gsm8k:main:test")


def test_hub_rows_are_read_like_lines(monkeypatch):
    fake = types.ModuleType("datasets")
    seen = {}

    def load(repo, config, split):
        seen.update(repo=repo, config=config, split=split)
        return [{"question": "q1", "answer": "x #### 5"}, {"question": "q2"}]

    fake.load_dataset = load
    monkeypatch.setitem(sys.modules, "datasets", fake)
    ds = load_dataset("hub:openai/gsm8k:main:test")
    assert seen == {"repo": "openai/gsm8k", "config": "main", "split": "test"}
    assert [(ex.id, ex.gold) for ex in ds.examples] == [("gsm8k-test:1", "5")]
    assert [m.line for m in ds.malformed] == [2]


def test_bad_hub_spec():
    with pytest.raises(DatasetError, match="hub:OWNER/NAME"):
        load_dataset("hub:openai/gsm8k")
