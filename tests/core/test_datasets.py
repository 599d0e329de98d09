"""tale_integrations.core.datasets: one registry read alike by evaluation and training, the data folder
resolver, the gold parser, and the errors of an unknown name or a missing file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tale_integrations.core.datasets import (
    ALIASES,
    DATASETS,
    AnswerFormat,
    DatasetNotFoundError,
    DatasetSpec,
    data_dir,
    find_dataset,
    get_dataset,
    locate,
    parse_gold,
    slug,
)
from tale_integrations.core.errors import DatasetError
from tale_integrations.eval.datasets import load_dataset
from tale_integrations.training.data import TRAINING_ALIASES, load_questions, training_names
from tale_integrations.training.estimator import dataset_path


def _answer(spec: DatasetSpec, n: int) -> object:
    if spec.answer_format is AnswerFormat.GSM8K:
        return f"work\n#### {n}"
    if spec.answer_format is AnswerFormat.CHOICE:
        return "AB"[n % 2]
    return float(n)


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    """A data folder holding every registry file, each with questions naming its own path."""
    for spec in DATASETS.values():
        path = tmp_path / spec.path
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = [{"question": f"{spec.path} #{n}?", "answer": _answer(spec, n),
                 **({spec.options: ["1", "2"]} if spec.options else {})} for n in range(1, 4)]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return tmp_path


def test_every_name_is_one_split_of_one_file():
    assert {"gsm8k", "gsm8k-train", "gsm8k-zero", "mathbench-arithmetic", "mathbench-middle"} <= set(DATASETS)
    assert DATASETS["gsm8k"].split == "test" and DATASETS["gsm8k"].path == "gsm8k/test.jsonl"
    assert DATASETS["gsm8k-train"].split == "train" and DATASETS["gsm8k-train"].path == "gsm8k/train.jsonl"
    assert len({spec.path for spec in DATASETS.values()}) == len(DATASETS)
    assert all(name == spec.name for name, spec in DATASETS.items())
    assert all(target in DATASETS and alias not in DATASETS for alias, target in ALIASES.items())
    assert get_dataset("gsm8k-test") is DATASETS["gsm8k"] and find_dataset("nope") is None


@pytest.mark.parametrize("name", [*DATASETS, *ALIASES])
def test_eval_and_training_read_a_name_as_the_same_file(folder, name):
    spec = get_dataset(name)
    evaluated = load_dataset(name, root=folder)
    assert evaluated.name == spec.name and evaluated.source == str(folder / spec.path)
    if name in TRAINING_ALIASES:  # the one name training reads otherwise: see the next test
        return
    assert dataset_path(name, folder) == (folder / spec.path, spec.path)
    trained = load_questions(name, data_dir=folder)
    assert [it.question for it in trained] == [ex.question for ex in evaluated.examples]
    assert [it.gold for it in trained] == [ex.gold for ex in evaluated.examples]
    assert [it.options for it in trained] == [ex.options for ex in evaluated.examples]


def test_training_keeps_gsm8k_as_the_train_split(folder):
    assert TRAINING_ALIASES == {"gsm8k": "gsm8k-train"}
    assert [it.question for it in load_questions("gsm8k", data_dir=folder)] == \
        [it.question for it in load_questions("gsm8k-train", data_dir=folder)]
    assert dataset_path("gsm8k", folder) == (folder / "gsm8k/train.jsonl", "gsm8k/train.jsonl")
    assert load_dataset("gsm8k", root=folder).source == str(folder / "gsm8k/test.jsonl")  # eval: the test split
    assert "gsm8k = gsm8k-train here" in training_names() and "gsm8k-test" in training_names()


def test_data_dir_prefers_the_argument_then_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TALE_DATA_DIR", str(tmp_path / "env"))
    assert data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert data_dir() == tmp_path / "env"
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("TALE_DATA_DIR", "~/data")
    assert data_dir() == tmp_path / "data"
    monkeypatch.delenv("TALE_DATA_DIR")
    assert data_dir().parts[-2:] == ("shared", "data") and data_dir().is_absolute()


def test_data_dir_looks_beside_the_working_folder_first(tmp_path, monkeypatch):
    monkeypatch.delenv("TALE_DATA_DIR", raising=False)
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    assert data_dir() == (tmp_path / "shared" / "data").resolve()


def test_unknown_names_list_the_known_ones(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset 'nope'; the known names are gsm8k, gsm8k-train") as err:
        get_dataset("nope")
    assert all(name in str(err.value) for name in [*DATASETS, *ALIASES])
    with pytest.raises(DatasetNotFoundError, match=r"'nope' is neither a known name \(gsm8k, .*mathbench-middle"):
        locate("nope")
    # one error for every caller: eval catches DatasetError, training FileNotFoundError
    assert issubclass(DatasetNotFoundError, DatasetError) and issubclass(DatasetNotFoundError, FileNotFoundError)
    with pytest.raises(DatasetError, match="hub:OWNER/NAME"):
        load_dataset("nope")
    with pytest.raises(FileNotFoundError, match="gsm8k-train"):
        load_questions("nope")


def test_a_missing_file_names_the_folder_and_the_fix(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"gsm8k/train\.jsonl; set TALE_DATA_DIR \(or --data-dir\)"):
        locate("gsm8k-train", tmp_path)
    with pytest.raises(DatasetNotFoundError, match="or use hub:openai/gsm8k:main:test"):
        locate("gsm8k", tmp_path)


def test_a_path_is_located_as_itself(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text("{}\n")
    assert locate(path) == (None, path)


@pytest.mark.parametrize(("value", "fmt", "options", "gold"), [
    ("work #### 1,450", AnswerFormat.GSM8K, None, "1450"),
    (48.0, AnswerFormat.NUMERIC, None, "48"),
    ("1,234", "numeric", None, "1234"),
    ("b", AnswerFormat.CHOICE, ("x", "y"), "B"),
    (1, AnswerFormat.CHOICE, ("x", "y"), "B"),
    ("work #### 7", None, None, "7"),
    (2.5, None, None, "2.5"),
    (" B ", None, None, "B"),
])
def test_parse_gold(value, fmt, options, gold):
    assert parse_gold(value, fmt, options) == gold


@pytest.mark.parametrize(("value", "fmt", "options", "message"), [
    (12, AnswerFormat.GSM8K, None, "ending with '#### <number>'"),
    ("no marker", AnswerFormat.GSM8K, None, "'####'"),
    ("C", AnswerFormat.CHOICE, ("x", "y"), "'AB'"),
    (2, AnswerFormat.CHOICE, ("x", "y"), "outside the 2 options"),
    (True, AnswerFormat.NUMERIC, None, "a number or a string"),
    (True, None, None, "'answer' must be a number or a string"),
    ("  ", None, None, "non-empty string"),
])
def test_parse_gold_says_what_is_wrong(value, fmt, options, message):
    with pytest.raises(ValueError, match=message):
        parse_gold(value, fmt, options)


def test_slug():
    assert slug("gsm8k/test set") == "gsm8k-test-set"
    assert slug("///") == "x" and slug("", "dataset") == "dataset"


def test_a_spec_refuses_options_without_the_choice_format():
    with pytest.raises(ValueError, match="options field"):
        DatasetSpec(name="x", path="x.jsonl", split="test", options="options")
    with pytest.raises(ValueError, match="split"):
        DatasetSpec(name="x", path="x.jsonl", split="dev")  # type: ignore[arg-type]
    assert DatasetSpec(name="x", path="x.jsonl", split="train").to_dict()["answer_format"] == "numeric"
