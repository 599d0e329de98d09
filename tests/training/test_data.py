"""TALE-PT data: question loading, the seeded hash split, SFT/DPO records, JSONL files and their errors."""

from __future__ import annotations

import json

import pytest

from tale_integrations.core.prompts import answer_messages
from tale_integrations.core.records import RecoveredFileWarning
from tale_integrations.training.data import (
    DPORecord,
    SFTRecord,
    build_dpo_records,
    build_sft_records,
    load_dpo_data,
    load_questions,
    load_sft_data,
    read_dpo_records,
    read_sft_records,
    select_split,
    split_by_hash,
    write_jsonl,
)

# -- questions -------------------------------------------------------------------------------------


def test_load_questions_reads_gsm8k_and_gsm8k_zero_golds(tmp_path, write_questions):
    path = write_questions(tmp_path / "q.jsonl", [
        {"question": "A?", "answer": "work... #### 1,450"},
        {"question": "B?", "answer": 48.0},
        {"question": "C?", "answer": 2.5, "id": "c"},
        {"question": "D?", "answer": "B", "options": ["1", "2", "3", "4"]},
    ])
    items = load_questions(path)
    assert [(it.id, it.gold) for it in items] == [("0", "1450"), ("1", "48"), ("c", "2.5"), ("3", "B")]
    assert items[3].format == "multiple_choice" and items[3].options == ("1", "2", "3", "4")
    assert [it.id for it in load_questions(path, limit=2)] == ["0", "1"]


def test_named_dataset_resolves_under_the_data_dir(data_dir):
    items = load_questions("gsm8k-zero", data_dir=data_dir, limit=3)
    assert len(items) == 3 and items[0].gold == "48"


@pytest.mark.parametrize(("content", "message"), [
    ("", "is empty"),
    ('{"question": "A?", "answer": 1}\nnot json\n', r"line 2: not valid JSON"),
    ('{"answer": 1}\n', r"line 1: needs a non-empty 'question'"),
    ('{"question": "A?"}\n', r"line 1: has no 'answer'"),
    ('{"question": "A?", "answer": 1, "id": "x"}\n{"question": "B?", "answer": 2, "id": "x"}\n', "ids repeat"),
])
def test_bad_question_files_name_the_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_questions(path)


def test_unknown_dataset_names_the_known_ones(tmp_path):
    with pytest.raises(FileNotFoundError, match="gsm8k-zero"):
        load_questions("no-such-set")
    with pytest.raises(FileNotFoundError, match="TALE_DATA_DIR"):
        load_questions("gsm8k", data_dir=tmp_path)


# -- split ----------------------------------------------------------------------------------------


def test_split_is_deterministic_disjoint_and_seeded(questions):
    train, held = split_by_hash(questions, seed=1, held_out=0.3)
    assert (train, held) == split_by_hash(questions, seed=1, held_out=0.3)
    assert sorted(it.id for it in train + held) == sorted(it.id for it in questions)
    assert not {it.id for it in train} & {it.id for it in held}
    assert 0 < len(held) < len(questions)
    assert split_by_hash(questions, seed=2, held_out=0.3) != (train, held)


def test_split_depends_only_on_each_question(questions):
    _, held = split_by_hash(questions, seed=7, held_out=0.5)
    _, held_reversed = split_by_hash(list(reversed(questions)), seed=7, held_out=0.5)
    _, held_subset = split_by_hash(questions[:10], seed=7, held_out=0.5)
    assert {it.id for it in held_reversed} == {it.id for it in held}
    assert {it.id for it in held_subset} == {it.id for it in held if int(it.id) < 10}
    # the same text always lands on the same side, and plain strings work
    texts = [it.question for it in questions]
    assert split_by_hash(texts + texts, seed=7, held_out=0.5)[1] == [t for t in texts + texts
                                                                      if t in {it.question for it in held}]


def test_split_edges_and_errors(questions):
    assert split_by_hash(questions, seed=0, held_out=0) == (questions, [])
    assert split_by_hash(questions, seed=0, held_out=1) == ([], questions)
    assert select_split(questions, "all", seed=0, held_out=0.5) == questions
    held = split_by_hash(questions, seed=0, held_out=0.5)[1]
    assert select_split(questions, "held-out", seed=0, held_out=0.5) == held
    with pytest.raises(ValueError, match="held_out"):
        split_by_hash(questions, seed=0, held_out=1.5)
    with pytest.raises(TypeError, match="seed"):
        split_by_hash(questions, seed="0", held_out=0.5)
    with pytest.raises(ValueError, match="split"):
        select_split(questions, "test", seed=0, held_out=0.5)


# -- records --------------------------------------------------------------------------------------


def test_sft_records_have_a_budget_free_prompt_and_the_optimal_answer(make_record):
    records = [make_record("a", question="What is 2 plus 2?"), make_record("b", "no_budget"),
               make_record("c", "vanilla_wrong"), make_record("d", "vanilla_wrong")]
    sft, stats = build_sft_records(records)
    assert [r.id for r in sft] == ["a"]
    assert list(sft[0].prompt) == answer_messages("What is 2 plus 2?")
    assert "use less than" not in sft[0].prompt[-1]["content"]
    assert sft[0].completion == records[0].optimal_answer and sft[0].budget == 16
    assert (stats.total, stats.used) == (4, 1)
    assert stats.left_out == {"no_budget": 1, "vanilla_wrong": 2}
    assert stats.budget["median"] == 16 and stats.target_tokens["mean"] == 10 and stats.vanilla_tokens["mean"] == 60
    assert "1 of 4 records used" in stats.summary()


def test_dpo_records_pair_the_optimal_and_the_vanilla_answer(make_record):
    same = make_record("same", optimal="[[40]]", vanilla="[[40]]")
    records = [make_record("a"), same, make_record("b", "no_budget")]
    dpo, stats = build_dpo_records(records)
    assert [r.id for r in dpo] == ["a"]
    assert dpo[0].chosen == records[0].optimal_answer and dpo[0].rejected == records[0].vanilla_answer
    assert stats.left_out == {"identical_answers": 1, "no_budget": 1}


def test_multiple_choice_search_records_are_refused(make_record):
    import dataclasses

    record = dataclasses.replace(make_record("a"), format="multiple_choice")
    with pytest.raises(ValueError, match="options"):
        build_sft_records([record])


def test_record_validation_names_the_field():
    with pytest.raises(ValueError, match="completion"):
        SFTRecord(id="x", prompt=answer_messages("Q?"), completion="  ")
    with pytest.raises(ValueError, match="prompt"):
        SFTRecord(id="x", prompt=[], completion="a")
    with pytest.raises(ValueError, match="budget"):
        DPORecord(id="x", prompt=answer_messages("Q?"), chosen="a", rejected="b", budget=-1)


# -- files ----------------------------------------------------------------------------------------


def test_jsonl_round_trip(tmp_path, make_record):
    sft, _ = build_sft_records([make_record("a"), make_record("b")])
    dpo, _ = build_dpo_records([make_record("a")])
    assert read_sft_records(write_jsonl(tmp_path / "sft.jsonl", sft)) == sft
    assert read_dpo_records(write_jsonl(tmp_path / "dpo.jsonl", dpo)) == dpo
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_jsonl_write_that_fails_midway_keeps_the_old_file(tmp_path, make_record):
    sft, _ = build_sft_records([make_record("a"), make_record("b")])
    path = write_jsonl(tmp_path / "sft.jsonl", sft[:1])
    before = path.read_bytes()

    class Unwritable:
        def to_dict(self):
            raise ValueError("cannot serialise this record")

    with pytest.raises(ValueError, match="cannot serialise"):
        write_jsonl(path, [sft[1], Unwritable()])  # the first record is fine, the second fails
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["sft.jsonl"]


def test_load_data_from_a_search_file_counts_what_is_left_out(search_file):
    sft, stats = load_sft_data(search_file)
    assert len(sft) == 6 and stats.left_out == {"no_budget": 1, "vanilla_wrong": 2}
    dpo, _ = load_dpo_data(search_file)
    assert len(dpo) == 6


@pytest.mark.parametrize(("content", "message"), [
    ("", "is empty"),
    ("\n\n", "is empty"),
    ('{"id": "a", "prompt": [{"role": "user", "content": "Q"}], "completion": "A"}\n{oops\n', "line 2: not valid JSON"),
    ('{"id": "a", "prompt": [{"role": "user", "content": "Q"}]}\n', "line 1: missing 'completion'"),
    ('{"id": "a", "prompt": "Q", "completion": "A"}\n', "line 1: .*'prompt' must be"),
    ("[1, 2]\n", "line 1: expected a JSON object"),
])
def test_bad_sft_files_name_the_file_and_line(tmp_path, content, message):
    path = tmp_path / "sft.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        load_sft_data(path)
    assert str(path) in str(info.value)


def test_bad_search_files_are_clear_errors(tmp_path, write_search, make_record):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty.jsonl is empty"):
        load_sft_data(empty)
    header_only = write_search(tmp_path / "header.jsonl", [])
    with pytest.raises(ValueError, match="no records"):
        load_sft_data(header_only)
    broken = write_search(tmp_path / "broken.jsonl", [make_record("a")])
    broken.write_text(broken.read_text() + '{"id": "b", "status": "found"}\n')
    with pytest.warns(RecoveredFileWarning, match="broken.jsonl: 1 line left out \\(line 3: "):
        records, _ = load_sft_data(broken)  # the good record is kept, the malformed one left out
    assert [r.id for r in records] == ["a"]
    useless = write_search(tmp_path / "useless.jsonl",
                           [make_record("a", "no_budget"), make_record("b", "vanilla_wrong")])
    with pytest.raises(ValueError, match=r"useless.jsonl: no usable training records.*1 no_budget, 1 vanilla_wrong"):
        load_sft_data(useless)
    with pytest.raises(ValueError, match="search file, not a training file"):
        read_sft_records(useless)
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_dpo_data(tmp_path / "missing.jsonl")


def test_written_files_are_one_record_per_line(tmp_path, make_record):
    sft, _ = build_sft_records([make_record("a")])
    lines = write_jsonl(tmp_path / "x.jsonl", sft).read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["completion"] == sft[0].completion


def test_data_and_the_cli_module_import_no_torch():
    import subprocess
    import sys

    code = ("import sys, tale_integrations.training, tale_integrations.training.data, tale_integrations.training.cli; "
            "heavy = [m for m in ('torch', 'transformers', 'peft', 'accelerate') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
