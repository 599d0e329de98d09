"""tale_integrations.eval.cli: the `eval` and `report` subcommands, on a tiny local model folder."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from tale_integrations.core.records import RecoveredFileWarning
from tale_integrations.eval.cli import add_eval_parsers, make_generator


def parse(argv):
    parser = argparse.ArgumentParser(prog="tale")
    sub = parser.add_subparsers(dest="command", required=True)
    add_eval_parsers(sub)
    return parser.parse_args(argv)


def test_parsers_and_defaults():
    args = parse(["eval", "--dataset", "gsm8k-zero", "--out", "RUN"])
    assert (args.methods, args.batch_size, args.max_tokens, args.concurrency, args.counter) == (
        "direct,vanilla,tale-ep", 16, None, 8, "usage")
    assert args.model is None and args.temperature is None and callable(args.handler)
    args = parse(["report", "RUN", "--prices", "p.json", "--counter", "cl100k_base"])
    assert (args.run_dir, args.prices, args.counter) == ("RUN", "p.json", "cl100k_base")
    with pytest.raises(SystemExit):
        parse(["eval", "--dataset", "x", "--out", "r", "--batch-size", "0"])


def test_eval_then_report_on_a_tiny_model(one_torch_thread, tiny_model_dir, write_jsonl, tmp_path, capsys):
    data = write_jsonl(tmp_path / "mini.jsonl", [{"question": "What is 3 + 4?", "answer": 7},
                                                 {"question": "What is 1 + 1?", "answer": 2}, "{broken"])
    out = tmp_path / "run"
    args = parse(["eval", "--dataset", str(data), "--methods", "vanilla,fixed:10", "--model", str(tiny_model_dir),
                  "--max-tokens", "6", "--batch-size", "2", "--out", str(out), "--no-progress"])
    assert args.handler(args) == 0
    captured = capsys.readouterr()
    model = tiny_model_dir.name
    assert "| Dataset | Vanilla CoT | Fixed B=10 |" in captured.out
    assert f"no price for model '{model}'" in captured.err  # a local model: expense n/a, with the fix
    assert "skipped 1 malformed line(s)" in captured.err
    assert sorted(p.name for p in (out / "results").iterdir()) == [
        f"mini__fixed-10__{model}.jsonl", f"mini__vanilla__{model}.jsonl"]
    assert {"report.md", "summary.json", "accuracy_tokens.png", "run.json"} <= {p.name for p in out.iterdir()}
    records = [json.loads(x) for x in (out / "results" / f"mini__fixed-10__{model}.jsonl").read_text().splitlines()[1:]]
    assert [r["budget"] for r in records] == [6, 6] and all(r["output_tokens"] <= 6 for r in records)

    # The same command again resumes: nothing new is asked, the report is the same.
    assert args.handler(args) == 0
    assert "2 questions (2 resumed)" in capsys.readouterr().err

    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({model: {"input": 0, "output": 0}}))
    args = parse(["report", str(out), "--prices", str(prices), "--counter", "cl100k_base", "--no-plots"])
    assert args.handler(args) == 0
    captured = capsys.readouterr()
    assert "counted by `tiktoken:cl100k_base`" in captured.out and "$0.0000" in captured.out
    assert "no price" not in captured.err

    # A damaged results file (a duplicated line, a cut one) is reported, not a traceback, and counted once.
    vanilla = out / "results" / f"mini__vanilla__{model}.jsonl"
    lines = vanilla.read_bytes().splitlines(keepends=True)
    vanilla.write_bytes(b"".join(lines) + lines[1] + lines[2][:7])
    args = parse(["report", str(out), "--no-plots"])
    with pytest.warns(RecoveredFileWarning, match=r"2 lines left out \(line 4: a second copy of id"):
        assert args.handler(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert {m["method"]: m["n"] for m in summary["metrics"]}["vanilla"] == 2


def test_api_model_arguments_are_checked_before_any_import(monkeypatch):
    with pytest.raises(ValueError, match="needs a name"):
        make_generator("openai:")
    monkeypatch.delenv("TALE_TEST_NO_SUCH_KEY", raising=False)
    with pytest.raises(ValueError, match="TALE_TEST_NO_SUCH_KEY"):
        make_generator("openai:gpt-4o-mini", api_key_env="TALE_TEST_NO_SUCH_KEY")


def test_bad_method_and_missing_prices_file_fail_before_any_model_call(tmp_path):
    args = parse(["eval", "--dataset", "gsm8k-zero", "--methods", "vanilla,telepathy", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="unknown method 'telepathy'"):
        args.handler(args)
    args = parse(["eval", "--dataset", "gsm8k-zero", "--prices", str(tmp_path / "none.json"), "--out", str(tmp_path)])
    with pytest.raises(FileNotFoundError):
        args.handler(args)


def test_importing_the_eval_cli_stays_light():
    code = ("import sys, tale_integrations.eval.cli, tale_integrations.eval; "
            "print(sorted({'torch', 'transformers', 'tiktoken', 'matplotlib', 'openai', 'tqdm', 'datasets'} "
            "& {m.split('.')[0] for m in sys.modules}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_openai_models_build_an_openai_generator(monkeypatch):
    pytest.importorskip("openai")
    monkeypatch.setenv("TALE_TEST_KEY", "sk-test")
    gen, is_api = make_generator("openai:gpt-4o-mini", api_key_env="TALE_TEST_KEY", seed=1024, temperature=0.1)
    assert is_api and gen.model_name == "gpt-4o-mini" and (gen.seed, gen.temperature) == (1024, 0.1)
    gen, is_api = make_generator("my-served-model", base_url="http://127.0.0.1:9/v1", api_key_env="TALE_TEST_KEY")
    assert is_api and gen.model_name == "my-served-model" and str(gen.client.base_url).startswith("http://127.0.0.1:9")


class StubAPI:
    """Stands in for an API model: async, answers [[N]] where N is the question's number."""

    model_name = "gpt-4o-mini"

    def __init__(self):
        self.sync_calls = 0

    def generate(self, prompts, **kwargs):
        self.sync_calls += 1
        raise AssertionError("an API model must be driven asynchronously")

    async def agenerate(self, prompts, **kwargs):
        from tale_integrations.core.generation import Generation, Usage

        out = []
        for p in prompts:
            number = p[-1]["content"].split("What is ")[1].split("?")[0]
            out.append(Generation(text=f"[[{number}]]", usage=Usage(input_tokens=100, output_tokens=10),
                                  finish_reason="stop", model="gpt-4o-mini-2024-07-18"))
        return out


def test_eval_drives_api_models_concurrently(monkeypatch, write_jsonl, tmp_path, capsys):
    import tale_integrations.eval.cli as cli

    stub = StubAPI()
    monkeypatch.setattr(cli, "make_generator", lambda *a, **k: (stub, True))
    data = write_jsonl(tmp_path / "q.jsonl", [{"question": f"What is {i}?", "answer": i} for i in range(1, 5)])
    args = parse(["eval", "--dataset", str(data), "--methods", "vanilla", "--model", "openai:gpt-4o-mini",
                  "--out", str(tmp_path / "run"), "--concurrency", "2", "--no-progress"])
    assert args.handler(args) == 0 and stub.sync_calls == 0
    out = capsys.readouterr().out
    # 4/4 right, 10 tokens; (100 * 0.15 + 10 * 0.60) / 1e6 $ per question = $0.0210 per 1k (dated name priced).
    assert "| q | 100.00% / 10.00 / $0.0210 |" in out


def test_data_dir_points_the_named_datasets_elsewhere(tmp_path, monkeypatch):
    from tale_integrations.eval.datasets import DatasetError

    monkeypatch.setenv("TALE_DATA_DIR", str(tmp_path / "unused"))
    args = parse(["eval", "--dataset", "gsm8k-zero", "--data-dir", str(tmp_path), "--out", str(tmp_path / "r")])
    with pytest.raises(DatasetError, match=f"not found at {tmp_path / 'gsm8k_zero' / 'test.jsonl'}"):
        args.handler(args)  # before any model is loaded
