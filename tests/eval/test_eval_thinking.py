"""``tale eval`` on thinking models: the ``think``, ``think:B`` and ``think-tale`` methods through each
generator's knob (`OpenAIGenerator` on the real openai SDK over a mock transport; a tiny local model
whose chat template has a thinking block), the prompt where there is none, and thinking and answer
tokens reported apart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from vendor_mocks import Capture, openai_reply

from tale_integrations.core.generation import FunctionGenerator, Generation, Usage
from tale_integrations.core.learned import default_learned_estimator
from tale_integrations.core.prompts import answer_messages
from tale_integrations.core.thinking import ThinkingPolicy
from tale_integrations.eval import evaluate, load_dataset
from tale_integrations.eval.methods import Method, MethodKind, MethodRunner, parse_methods
from tale_integrations.eval.report import build_report, render_markdown

Q = "Tom has 2 apples and buys 3 more. How many apples does he have?"
LEARNED = default_learned_estimator().estimate([Q])[0].raw


def dataset(tmp_path: Path, answer: int = 5) -> Any:
    path = tmp_path / "apples.jsonl"
    path.write_text(json.dumps({"question": Q, "answer": answer}) + "\n", encoding="utf-8")
    return load_dataset(str(path))


def records(run: Path, method: str) -> list[dict[str, Any]]:
    [path] = [p for p in (run / "results").iterdir() if f"__{method.replace(':', '-')}__" in p.name]
    header, *rest = [json.loads(line) for line in path.read_text().splitlines()]
    return [header["header"], *rest]


@pytest.mark.parametrize(("text", "kind", "param", "label"), [
    ("think", MethodKind.THINK, None, "Thinking (unlimited)"),
    ("think:300", MethodKind.THINK, 300, "Thinking B=300"),
    ("think-tale", MethodKind.THINK_TALE, None, "Thinking TALE"),
    ("Think-Tale:learned", MethodKind.THINK_TALE, "learned", "Thinking TALE (learned)"),
])
def test_parse_thinking_methods(text, kind, param, label):
    method = Method.parse(text)
    assert (method.kind, method.param, method.label) == (kind, param, label)
    assert Method.parse(method.name) == method


@pytest.mark.parametrize(("text", "message"), [("think:0", "think:B"), ("think:x", "bad number"),
                                               ("think-tale:oracle", "estimator name")])
def test_parse_thinking_method_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_methods(text)


# -- an API thinking model ------------------------------------------------------------------------------


def openai_generator(model: str, **kwargs: Any) -> tuple[Any, Capture]:
    openai = pytest.importorskip("openai")
    httpx2 = pytest.importorskip("httpx2")
    from tale_integrations.backends.openai import OpenAIGenerator

    capture = Capture(httpx2, openai_reply("So he has [[5]].", reasoning=40, reasoning_text="2 + 3 = 5"))
    base = {"base_url": "http://mock.invalid/v1", "api_key": "k", "max_retries": 0}
    return OpenAIGenerator(model, client=openai.OpenAI(http_client=capture.client(), **base),
                           async_client=openai.AsyncOpenAI(http_client=capture.async_client(), **base),
                           **kwargs), capture


@pytest.mark.parametrize("asynchronous", [False, True])
def test_thinking_methods_on_a_reasoning_model(tmp_path, asynchronous):
    import asyncio

    from tale_integrations.eval import aevaluate

    gen, capture = openai_generator("o3")
    methods = ["vanilla", "think", "think:300", "think-tale:learned"]
    run = tmp_path / "run"
    if asynchronous:
        asyncio.run(aevaluate(gen, dataset(tmp_path), methods, run, max_tokens=512, progress="none"))
    else:
        evaluate(gen, dataset(tmp_path), methods, run, max_tokens=512, progress="none")
    vanilla, unlimited, fixed, tale = capture.bodies
    plain = answer_messages(Q, format="gsm8k")
    assert vanilla == {"model": "o3", "messages": plain, "max_completion_tokens": 512}
    assert unlimited == {"model": "o3", "messages": plain}  # the engine's own thinking, no cap
    assert fixed == {"model": "o3", "messages": plain, "reasoning_effort": "low", "max_completion_tokens": 2048 + 512}
    assert tale["reasoning_effort"] == "low"  # o3 takes no "minimal": the next level up
    header, rec = records(run, "think:300")
    assert header["thinking"]["family"] == "o-series" and header["thinking_policy"]["answer_reserve"] == 512
    assert (rec["budget"], rec["budget_via"], rec["correct"]) == (300, "thinking", True)
    assert rec["thinking"]["fields"] == {"reasoning_effort": "low", "max_completion_tokens": 2560}
    assert (rec["reasoning_tokens"], rec["answer_tokens"], rec["output_tokens"]) == (40, 5, 45)
    assert rec["reasoning"] == "2 + 3 = 5"
    header, rec = records(run, "think-tale:learned")
    assert header["estimator"] == "learned" and rec["budget_raw"] == LEARNED and rec["estimator"] == "learned"
    assert records(run, "think")[1]["budget_via"] == "thinking" and records(run, "vanilla")[1]["budget_via"] is None


def test_report_shows_thinking_and_answer_tokens_apart(tmp_path):
    gen, _ = openai_generator("o3")
    evaluate(gen, dataset(tmp_path), ["vanilla", "think:300"], tmp_path / "run", progress="none")
    report = build_report(tmp_path / "run")
    by = {m.method: m for m in report.metrics}
    think = by["think:300"]
    assert (think.reasoning_tokens, think.answer_tokens, think.thinking_n, think.output_tokens) == (40, 5, 1, 45)
    assert think.within_budget == 1.0 and think.budget_n == 1  # the knob bounds thinking: 40 <= 300
    assert by["vanilla"].thinking_n == 0
    markdown = render_markdown(report)
    assert "Thinking / answer tokens" in markdown and "40.00 / 5.00 (knob: 1)" in markdown


def test_declared_server_through_the_cli(tmp_path, monkeypatch):
    from tale_integrations import cli
    from tale_integrations.eval import cli as eval_cli

    gen, capture = openai_generator("Qwen/Qwen3-8B")
    monkeypatch.setattr(eval_cli, "make_generator", lambda *a, **k: (gen, True))
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"question": Q, "answer": 5}) + "\n")
    assert cli.main(["eval", "--dataset", str(path), "--model", "Qwen/Qwen3-8B", "--base-url", "http://x/v1",
                     "--methods", "think:40", "--thinking", "vllm", "--out", str(tmp_path / "run"),
                     "--no-progress", "--no-report"]) == 0
    assert capture.body["thinking_token_budget"] == 40 and capture.body["max_tokens"] == 40 + 512
    assert records(tmp_path / "run", "think:40")[1]["thinking"]["engine"] == "vllm"


def test_thinking_flag_is_for_api_models(tmp_path, monkeypatch, capsys):
    from tale_integrations import cli
    from tale_integrations.eval import cli as eval_cli

    monkeypatch.setattr(eval_cli, "make_generator", lambda *a, **k: (FunctionGenerator(lambda m, **_: "x"), False))
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"question": Q, "answer": 5}) + "\n")
    assert cli.main(["eval", "--dataset", str(path), "--methods", "think", "--thinking", "vllm",
                     "--out", str(tmp_path / "run"), "--no-progress", "--no-report"]) == 2
    assert "--thinking vllm is for API models" in capsys.readouterr().err


# -- a model without a knob: the prompt carries the budget ---------------------------------------------


def test_without_a_knob_the_prompt_carries_the_budget(tmp_path):
    sent: list[Any] = []

    def answer(messages: Any, **settings: Any) -> Generation:
        sent.append((messages, settings))
        return Generation(text="[[5]]", usage=Usage(input_tokens=9, output_tokens=3), finish_reason="stop", model="m")

    gen = FunctionGenerator(answer, model_name="m")
    evaluate(gen, dataset(tmp_path), ["think", "think:300"], tmp_path / "run", max_tokens=64, progress="none")
    (unlimited, _), (fixed, settings) = sent
    assert unlimited == answer_messages(Q, format="gsm8k")
    assert fixed == answer_messages(Q, budget=300, format="gsm8k") and settings["max_tokens"] == 64
    header, rec = records(tmp_path / "run", "think:300")
    assert header["thinking"] is None and (rec["budget_via"], rec["thinking"]) == ("prompt", None)
    assert records(tmp_path / "run", "think")[1]["budget_via"] is None


def test_runner_policy_and_refused_knob():
    gen, capture = openai_generator("o3", max_tokens=100)  # a cap too small for the o-series allowance
    runner = MethodRunner("think:300", gen, max_tokens=64, thinking_policy=ThinkingPolicy(answer_reserve=10))
    [out] = runner.run([load_example()])
    assert capture.body["max_completion_tokens"] == 100 and "output cap lowered" in out.thinking["adjusted"]


def load_example() -> Any:
    from tale_integrations.eval.datasets import Example

    return Example(id="1", question=Q, gold="5", kind="numeric", line=1)


# -- a local model with a thinking block ---------------------------------------------------------------


def test_local_thinking_model(tmp_path):
    pytest.importorskip("transformers")
    from tiny_models import build_chain_model, build_thinking_tokenizer

    from tale_integrations.backends.hf import HFGenerator
    from tale_integrations.backends.hf.settings import ThinkingEnforcement

    tok = build_thinking_tokenizer()
    script = {"Ċ": "<think>", "<think>": " 7", "</think>": "[[40]]", "[[40]]": tok.eos_token}
    gen = HFGenerator.from_model(build_chain_model(tok, script, default=" 7"), tok, model_name="chain",
                                 thinking=ThinkingEnforcement(answer_reserve=8))
    run = tmp_path / "run"
    evaluate(gen, dataset(tmp_path, 40), ["think:5", "think-tale:learned", "fixed:5"], run, max_tokens=12,
             progress="none")
    header, rec = records(run, "think:5")
    assert header["thinking"]["engine"] == "hf" and header["thinking_policy"]["answer_reserve"] == 16
    assert rec["thinking"]["fields"] == {"thinking_budget": 5, "max_tokens": 5 + 16} and rec["correct"]
    assert rec["reasoning_tokens"] == 5 + 2 and rec["answer_tokens"] == 2  # <think>, 5 thoughts, </think>; [[5]], end
    assert rec["reasoning"] == " ".join(["7"] * 5) and rec["messages"][-1]["content"] == answer_messages(
        Q, format="gsm8k")[-1]["content"]
    tale = records(run, "think-tale:learned")[1]
    assert tale["budget"] == LEARNED and tale["reasoning_tokens"] == LEARNED + 2 and tale["budget_via"] == "thinking"
    assert records(run, "fixed:5")[1]["budget_via"] == "prompt"
