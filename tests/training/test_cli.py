"""``tale search`` and ``tale train``: the search-driving logic with scripted generators, training
from the command line, and bad input (clear errors naming the path or argument, nothing overwritten)."""

from __future__ import annotations

import argparse
import json
import sys

import pytest

from tale_integrations.core.search import load_records
from tale_integrations.training import cli as training_cli
from tale_integrations.training.data import split_by_hash, write_jsonl

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")


def tale(argv: list[str]) -> int:
    """The ``tale`` command as `tale_integrations.cli.main` runs it, with the training parsers."""
    parser = argparse.ArgumentParser(prog="tale")
    sub = parser.add_subparsers(dest="command", required=True)
    training_cli.add_training_parsers(sub)
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, TypeError, OSError, ImportError) as exc:
        print(f"tale {args.command}: error: {exc}", file=sys.stderr)
        return 2


class Counting:
    """Wraps a generator and records every batch it is asked for."""

    def __init__(self, generator):
        self.generator, self.calls = generator, []
        self.model_name = generator.model_name

    def generate(self, prompts, **kwargs):
        self.calls.append((len(prompts), kwargs))
        return self.generator.generate(prompts, **kwargs)

    async def agenerate(self, prompts, **kwargs):
        return await self.generator.agenerate(prompts, **kwargs)


@pytest.fixture()
def dataset(tmp_path, write_questions):
    rows = [{"question": f"easy question {i}", "answer": float(i)} for i in range(8)]
    rows += [{"question": "hard question", "answer": 3.0}]
    return write_questions(tmp_path / "questions.jsonl", rows)


@pytest.fixture()
def scripted(monkeypatch, scripted_search):
    golds = {f"easy question {i}": str(i) for i in range(8)} | {"hard question": "3"}
    gen = Counting(scripted_search(golds))
    monkeypatch.setattr(training_cli, "_generator", lambda args: gen)
    return gen


# -- tale search -----------------------------------------------------------------------------------


def test_search_writes_one_record_per_question_and_a_summary(tmp_path, dataset, scripted, capsys):
    out = tmp_path / "search.jsonl"
    assert tale(["search", "--dataset", str(dataset), "--out", str(out), "--max-tokens", "128", "--quiet"]) == 0
    records = {r.id: r for r in load_records(str(out))}
    assert len(records) == 9
    assert records["8"].status == "vanilla_wrong"
    assert records["0"].status == "found" and records["0"].optimal_budget == 12  # 100 -> 50 -> 25 -> 12 (6 is wrong)
    assert scripted.calls[0] == (9, {"max_tokens": 128, "temperature": None})
    assert [n for n, _ in scripted.calls] == [9, 8, 8, 8, 8]  # one batched call per halving step
    summary = capsys.readouterr().out
    assert "9 searched: 8 found, 0 no_budget, 1 vanilla_wrong" in summary and "optimal budget median 12" in summary


def test_search_selects_the_seeded_split_and_the_limit(tmp_path, dataset, scripted):
    from tale_integrations.training.data import load_questions

    out = tmp_path / "train.jsonl"
    argv = ["search", "--dataset", str(dataset), "--out", str(out), "--split", "train", "--seed", "3",
            "--held-out", "0.5", "--quiet"]
    assert tale(argv) == 0
    train, held = split_by_hash(load_questions(dataset), seed=3, held_out=0.5)
    # the file holds records in the order questions finish: compare the sets
    assert held and sorted(r.id for r in load_records(str(out))) == sorted(it.id for it in train)
    limited = tmp_path / "limited.jsonl"
    assert tale(argv[:4] + [str(limited)] + argv[5:] + ["--limit", "2"]) == 0
    assert sorted(r.id for r in load_records(str(limited))) == sorted(it.id for it in train[:2])


def test_search_resumes_and_refuses_a_file_of_another_run(tmp_path, dataset, scripted, capsys):
    out = tmp_path / "search.jsonl"
    argv = ["search", "--dataset", str(dataset), "--out", str(out), "--quiet"]
    assert tale(argv + ["--limit", "4"]) == 0
    calls = len(scripted.calls)
    assert tale(argv) == 0  # the first four are read back, only the other five are searched
    assert scripted.calls[calls][0] == 5
    before = out.read_bytes()
    assert tale(argv + ["--max-tokens", "64"]) == 2
    assert "holds a different run" in capsys.readouterr().err and out.read_bytes() == before


def test_search_samples_each_question_several_times(tmp_path, dataset, scripted):
    out = tmp_path / "s.jsonl"
    argv = ["search", "--dataset", str(dataset), "--out", str(out), "--limit", "2", "--samples", "2", "--quiet"]
    assert tale(argv + ["--temperature", "0.7"]) == 0
    assert sorted(r.id for r in load_records(str(out))) == ["0#0", "0#1", "1#0", "1#1"]
    assert scripted.calls[0][1]["temperature"] == 0.7


def test_search_attempts_and_waves_reach_the_search(tmp_path, dataset, scripted):
    out = tmp_path / "s.jsonl"
    argv = ["search", "--dataset", str(dataset), "--out", str(out), "--limit", "3", "--attempts", "2", "--wave", "1",
            "--temperature", "0.5", "--quiet"]
    assert tale(argv) == 0
    header = json.loads(out.read_text().splitlines()[0])["header"]
    assert header["attempts"] == 2
    assert len(load_records(str(out))) == 3
    assert scripted.calls[0][0] == 1  # one question per wave: the first call is one vanilla answer
    assert max(n for n, _ in scripted.calls) == 2  # a halved budget is asked twice


@pytest.mark.parametrize(("extra", "message"), [
    (["--samples", "2"], "--samples 2 needs --temperature"),
    (["--attempts", "3"], "--attempts 3 needs --temperature"),
    (["--split", "held-out", "--held-out", "0"], "selects no question"),
    (["--base-url", "http://127.0.0.1:9/v1"], "--base-url needs --model"),
])
def test_search_bad_arguments_are_named(tmp_path, dataset, extra, message, capsys):
    out = tmp_path / "s.jsonl"
    assert tale(["search", "--dataset", str(dataset), "--out", str(out), *extra]) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_search_hf_counter_needs_a_local_model(tmp_path, dataset, capsys):
    pytest.importorskip("openai")
    argv = ["search", "--dataset", str(dataset), "--out", str(tmp_path / "s.jsonl"), "--model", "served",
            "--base-url", "http://127.0.0.1:9/v1", "--counter", "hf"]
    assert tale(argv) == 2
    assert "--counter hf needs a local --model" in capsys.readouterr().err


def test_search_with_a_real_tiny_model(tmp_path, dataset, monkeypatch, scripted_generator):
    gen = scripted_generator("[[40]]")  # a real HF model that always answers [[40]]: every answer is wrong
    monkeypatch.setattr(training_cli, "_generator", lambda args: gen)
    out = tmp_path / "s.jsonl"
    assert tale(["search", "--dataset", str(dataset), "--out", str(out), "--max-tokens", "4", "--limit", "3",
                 "--quiet"]) == 0
    records = load_records(str(out))
    assert [r.status for r in records] == ["vanilla_wrong"] * 3
    assert all(r.vanilla_tokens == 4 and r.counter == "usage" for r in records)


def test_search_unknown_dataset_is_named(tmp_path, capsys):
    assert tale(["search", "--dataset", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "s.jsonl")]) == 2
    assert "nope.jsonl" in capsys.readouterr().err


# -- tale train ------------------------------------------------------------------------------------

TINY = ["--epochs", "1", "--batch-size", "2", "--micro-batch-size", "1", "--quiet"]


def test_train_sft_from_a_search_file_with_overrides(tmp_path, tiny_model_dir, search_file, capsys):
    pytest.importorskip("peft")
    out = tmp_path / "sft"
    argv = ["train", "sft", "--search-file", str(search_file), "--model", str(tiny_model_dir), "--out", str(out),
            "--lr", "1e-3", "--save-every", "0", *TINY]
    assert tale(argv) == 0
    captured = capsys.readouterr()
    assert "6 of 9 records used (left out: 1 no_budget, 2 vanilla_wrong)" in captured.err
    assert "was searched with 'tiny'" in captured.err  # the fixture's header names another model: a note
    assert "TALE-PT sft trained: 3 steps on 6 examples" in captured.out
    meta = json.loads((out / "tale_pt.json").read_text())
    assert meta["hyperparameters"]["learning_rate"] == 1e-3 and meta["hyperparameters"]["epochs"] == 1
    assert meta["hyperparameters"]["weight_decay"] == 0.01  # the paper's default where not overridden
    assert tale(argv) == 0 and "already complete" in capsys.readouterr().out


def test_train_dpo_from_a_search_file(tmp_path, tiny_model_dir, search_file, capsys):
    pytest.importorskip("peft")
    out = tmp_path / "dpo"
    argv = ["train", "dpo", "--search-file", str(search_file), "--model", str(tiny_model_dir), "--out", str(out),
            "--beta", "0.1", "--target-modules", "q_proj,k_proj,v_proj", *TINY]
    assert tale(argv) == 0
    meta = json.loads((out / "tale_pt.json").read_text())
    assert meta["method"] == "dpo" and meta["hyperparameters"]["beta"] == 0.1
    assert meta["hyperparameters"]["target_modules"] == ["q_proj", "k_proj", "v_proj"]
    assert meta["hyperparameters"]["learning_rate"] == 3e-5


def test_train_bad_inputs_are_clear_errors(tmp_path, tiny_model_dir, search_file, write_search, make_record,
                                           sft_records, capsys):
    pytest.importorskip("peft")

    def train(*source: str) -> tuple[int, str]:
        code = tale(["train", "sft", *source, "--model", str(tiny_model_dir), "--out", str(tmp_path / "out"), *TINY])
        return code, capsys.readouterr().err

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    malformed = write_search(tmp_path / "malformed.jsonl", [])  # its only record line is damaged: left out
    malformed.write_text(malformed.read_text() + "{not json\n")
    useless = write_search(tmp_path / "useless.jsonl", [make_record("a", "no_budget")])
    sft_file = write_jsonl(tmp_path / "sft.jsonl", sft_records(2))
    cases = [
        (("--search-file", str(empty)), "is not a search file"),
        (("--data", str(empty)), "empty.jsonl is empty"),
        (("--search-file", str(malformed)), "malformed.jsonl holds a search header but no records"),
        (("--search-file", str(useless)), "useless.jsonl: no usable training records (0 of 1 records used (left out: "
                                          "1 no_budget)"),
        (("--data", str(search_file)), "is a search file; pass it with --search-file"),
        (("--search-file", str(sft_file)), "is not a search file"),
        (("--search-file", str(tmp_path / "missing.jsonl")), "--search-file"),
    ]
    for source, message in cases:
        code, err = train(*source)
        assert code == 2 and message in err, (source, err)
    assert not (tmp_path / "out").exists()


def test_train_into_a_folder_of_another_run_changes_nothing(tmp_path, tiny_model_dir, search_file, capsys):
    pytest.importorskip("peft")
    out = tmp_path / "out"
    base = ["train", "sft", "--search-file", str(search_file), "--model", str(tiny_model_dir), "--out", str(out)]
    assert tale(base + TINY) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert tale(base + TINY + ["--lr", "0.5"]) == 2
    err = capsys.readouterr().err
    assert f"output folder {out} holds a different TALE-PT run" in err and "learning_rate" in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_argument_errors_exit_before_any_work(tmp_path, search_file):
    for argv in (["train", "sft", "--search-file", str(search_file), "--out", str(tmp_path), "--lr", "0"],
                 ["train", "dpo", "--search-file", str(search_file), "--data", str(search_file), "--out", "x"],
                 ["train", "sft", "--out", str(tmp_path)]):
        with pytest.raises(SystemExit) as info:
            tale(argv)
        assert info.value.code == 2


def test_train_waits_for_another_trainer_only_with_wait(tmp_path, tiny_model_dir, search_file, monkeypatch):
    pytest.importorskip("peft")
    from tale_integrations.core.errors import RunLockedError
    from tale_integrations.core.files import FileLock

    monkeypatch.setenv("TALE_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "out"
    argv = ["train", "sft", "--search-file", str(search_file), "--model", str(tiny_model_dir), "--out", str(out), *TINY]
    with FileLock(out):  # another trainer holds the folder
        with pytest.raises(RunLockedError, match=rf"output folder {out} is being written by pid \d+ .*--wait"):
            tale(argv)
        with pytest.raises(RunLockedError, match=r"after waiting 0\.2 s"):
            tale([*argv, "--wait", "0.2"])
    assert not out.exists()  # refused before writing anything
    assert tale([*argv, "--wait"]) == 0 and (out / "tale_pt.json").is_file()
