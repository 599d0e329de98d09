"""`tale ask` end to end: on a tiny model folder (fast) and on the embedded model (`slow`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("transformers")

from tale_integrations.cli import main  # noqa: E402


def run_json(capsys, *args):
    assert main(["ask", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_ask_prints_answer_budget_and_tokens(tiny_model_dir, capsys):
    assert main(["ask", "What is 3 + 4?", "--model", str(tiny_model_dir), "--max-tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert f"Model: {tiny_model_dir.name}" in out
    assert "== TALE-EP (learned) ==" in out
    assert "Budget: " in out and "(estimated by learned" in out
    assert "Output tokens: 8 (hit the token cap)" in out
    assert "estimator learned: no model call" in out and "answer call" in out


def test_ask_zero_shot_estimator_is_one_flag_away(tiny_model_dir, capsys):
    assert main(["ask", "What is 3 + 4?", "--model", str(tiny_model_dir), "--max-tokens", "8",
                 "--estimator", "zero-shot"]) == 0
    out = capsys.readouterr().out
    assert "== TALE-EP (zero-shot:" in out and "estimator call" in out


def test_ask_learned_is_the_default_and_costs_no_estimator_tokens(tiny_model_dir, capsys):
    from tale_integrations.core.learned import default_learned_estimator

    question = "Natalia sold 48 clips in April and half as many in May. How many clips in total?"
    data = run_json(capsys, question, "--model", str(tiny_model_dir), "--max-tokens", "300")
    tale = data["tale"]
    assert tale["estimator"] == "learned"
    assert tale["estimator_usage"]["input_tokens"] == tale["estimator_usage"]["output_tokens"] == 0
    assert tale["budget_raw"] == default_learned_estimator().estimate([question])[0].raw
    assert tale["total_usage"] == tale["usage"] | {"counter": tale["total_usage"]["counter"]}


def test_ask_unknown_estimator_is_a_clear_error(tiny_model_dir, capsys):
    assert main(["ask", "Q?", "--model", str(tiny_model_dir), "--estimator", "lerned"]) == 2
    assert "unknown estimator 'lerned'" in capsys.readouterr().err


def test_ask_json_with_a_fixed_budget_reaches_the_prompt(tiny_model_dir, capsys):
    data = run_json(capsys, "What is 3 + 4?", "--model", str(tiny_model_dir), "--budget", "30", "--max-tokens", "5")
    tale = data["tale"]
    assert (tale["budget"], tale["budget_raw"], tale["budget_source"], tale["budget_adjusted"]) == (
        5, 30, "fixed", "lowered to cap")
    data = run_json(capsys, "What is 3 + 4?", "--model", str(tiny_model_dir), "--budget", "30", "--max-tokens", "30")
    tale = data["tale"]
    assert tale["budget"] == 30
    assert tale["mode"] == "fixed"
    assert tale["messages"][-1]["content"] == "What is 3 + 4?\nLet's think step by step and use less than 30 tokens:\n"
    assert tale["usage"]["output_tokens"] == 30
    assert tale["estimator_usage"] is None


def test_ask_compare_adds_vanilla(tiny_model_dir, capsys):
    data = run_json(capsys, "Q?", "--model", str(tiny_model_dir), "--compare", "--max-tokens", "4", "--format", "gsm8k")
    assert set(data) == {"tale", "vanilla", "tale_zero_shot"}
    assert data["tale"]["estimator"] == "learned" and data["tale_zero_shot"]["estimator"].startswith("zero-shot:")
    assert data["vanilla"]["messages"][-1]["content"].endswith("Let's think step by step:\n")
    assert data["vanilla"]["budget"] is None
    assert data["tale"]["messages"][-1]["content"].startswith("Q: Q?\n")


def test_ask_estimate_fallback_is_explained(tiny_model_dir, capsys):
    # A random tiny model never writes [[N]]: the fallback budget is used and the output says so.
    assert main(["ask", "Q?", "--model", str(tiny_model_dir), "--max-tokens", "200", "--estimator", "zero-shot"]) == 0
    out = capsys.readouterr().out
    assert "Budget: 128 tokens (fallback: the estimator gave no usable number" in out


def test_ask_missing_model_is_a_clear_error(tmp_path, capsys):
    assert main(["ask", "Q?", "--model", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "--model" not in err.split("error:")[0]


def test_ask_empty_question_is_a_clear_error(tiny_model_dir, capsys):
    assert main(["ask", "  ", "--model", str(tiny_model_dir)]) == 2
    assert "question is empty" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["--budget", "0"], ["--budget", "-4"], ["--max-tokens", "x"], ["--temperature", "9"]])
def test_ask_bad_numbers_are_refused_by_the_parser(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["ask", "Q?", *args])
    assert exit_info.value.code == 2
    assert "expected" in capsys.readouterr().err


def test_console_script_runs(tiny_model_dir):
    proc = subprocess.run(
        [sys.executable, "-m", "tale_integrations.cli", "ask", "Hi?", "--model", str(tiny_model_dir),
         "--budget", "25", "--max-tokens", "30"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "Budget: 25 tokens (given (fixed))" in proc.stdout


@pytest.mark.slow
def test_ask_on_the_embedded_model(capsys):
    data = run_json(capsys, "Tom has 3 apples and buys 4 more. How many apples does he have?", "--max-tokens", "64")
    tale = data["tale"]
    assert tale["model"] == "SmolLM2-135M-Instruct"
    tokens = tale["budget"]
    assert f"use less than {tokens} tokens:" in tale["messages"][-1]["content"]
    assert 1 <= tale["usage"]["output_tokens"] <= 64
    assert tale["estimator"] == "learned" and tale["estimator_usage"]["input_tokens"] == 0


@pytest.mark.slow
def test_ask_compare_on_the_embedded_model_shows_every_methods_tokens(capsys):
    assert main(["ask", "Tom has 3 apples and buys 4 more. How many apples does he have?", "--max-tokens", "64",
                 "--compare"]) == 0
    out = capsys.readouterr().out
    table = out.split("== Tokens per method ==")[1].splitlines()
    assert table[2].startswith("vanilla chain-of-thought | ")
    assert table[3].startswith("TALE-EP (learned) | ") and "x vanilla)" in table[3]
    assert table[4].startswith("TALE-EP (zero-shot:SmolLM2-135M-Instruct) | ")
    learned_total = int(table[3].split(" | ")[2].split()[0])
    zero_shot_total = int(table[4].split(" | ")[2].split()[0])
    assert learned_total < zero_shot_total  # the zero-shot estimator's own call costs tokens


def test_ask_enforce_holds_the_answer_to_its_budget(tiny_model_dir, capsys):
    data = run_json(capsys, "Q?", "--model", str(tiny_model_dir), "--budget", "20", "--max-tokens", "200", "--enforce",
                    "--format", "gsm8k")
    tale = data["tale"]
    assert tale["usage"]["output_tokens"] <= 20 + 24
    assert "[[" in tale["text"]


def test_ask_keeps_download_progress_bars(tiny_model_dir, capsys):
    # A `--model org/7B` download must show its progress: the CLI silences no bars globally.
    from huggingface_hub.utils import are_progress_bars_disabled
    from transformers.utils import logging as hf_logging

    assert main(["ask", "Q?", "--model", str(tiny_model_dir), "--budget", "5", "--max-tokens", "4"]) == 0
    capsys.readouterr()
    assert hf_logging.is_progress_bar_enabled() and not are_progress_bars_disabled()
