"""`tale eval --paper`: the request bodies an API model receives, byte for byte, for every dataset family.

The model is the real openai SDK client over an in-process transport that records each JSON body
and answers from a script: estimation chats with ``[[5]]`` (or a reply with no strict budget), answer
chats with ``[[1]]``. The expected strings are the reference scripts' literals (see
tests/core/test_paper_mode.py, which pins the same table for `TalePipeline`).
"""

from __future__ import annotations

import argparse
import json

import pytest

openai = pytest.importorskip("openai")
httpx2 = pytest.importorskip("httpx2")

from tale_integrations.backends.openai import OpenAIGenerator  # noqa: E402
from tale_integrations.eval.cli import add_eval_parsers  # noqa: E402
from tale_integrations.eval.report import load_results  # noqa: E402

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
ESTIMATION = (
    "Task: Analyze the given question and estimate the minimum number of tokens required to generate a complete "
    "and accurate response. Please Give the response by strictly following this format: [[budget]],for example: "
    "Budget: [[12]].\n\nBelow is the question:\n\nQuestion: \"{question}\"\n"
)
GSM8K = ("Q: {question}\nPlease Give the response by strictly following this format: [[answer]], for example: "
         "Answer: [[50]].Let's think step by step and use less than {budget} tokens:\n")
GSM8K_VANILLA = ("Q: {question}\nPlease Give the response by strictly following this format: [[answer]], for "
                 "example: Answer: [[50]].Let's think step by step:\n")
CHOICE = ("{question}\nPlease Give the response by strictly following this format: [[choice]],for example: "
          "Choice: [[A]].\nLet's think step by step and use less than {budget} tokens:\n")
CLOZE = "Q: {question}\nLet's think step by step and use less than {budget} tokens:\n"
CLOZE_VANILLA = "Q: {question}\nLet's think step by step:\n"
CLOZE_DIRECT = "Please answer the following question and give the answer directly\nQ: {question}"
CHOICE_DIRECT = ("Please answer the following question directly and give the answer directly without any reasoning "
                 "process. Please strictLy follow the format: [[choice]],for example: Choice: [[A]].\n{question}\n")

WORD = "Weng earns $12 an hour. How many dollars does she earn in 1 hour?"
ZERO = "Natalia sold clips to 48 of her friends in April. How many friends?"
ARITH = "Multiply -0.26 and -330782."
STEM = "What is 8-(2+5)?"
CHOICE_QUESTION = STEM + "\nA. 6\nB. 1\nC. -6\nD. 10\n"
NO_STRICT_BUDGET = "Hard one."  # its estimation reply has a budget only the lenient parser reads


def data_dir(tmp_path, write_jsonl):
    root = tmp_path / "data"
    write_jsonl(root / "gsm8k" / "test.jsonl", [{"question": WORD, "answer": "She earns 12.\n#### 12"}])
    write_jsonl(root / "gsm8k_zero" / "test.jsonl", [{"question": ZERO, "answer": 48.0},
                                                     {"question": NO_STRICT_BUDGET, "answer": 1.0}])
    write_jsonl(root / "mathbench" / "arithmetic_cloze_en.jsonl", [{"question": ARITH, "answer": "86003.32"}])
    write_jsonl(root / "mathbench" / "middle_single_choice_en.jsonl",
                [{"question": STEM, "options": ["6", "1", "-6", "10"], "answer": "B"}])
    return root


class ScriptedAPI:
    """Records every request body; answers like the scripted model described in the module docstring."""

    def __init__(self):
        self.bodies = []

    def _respond(self, request):
        body = json.loads(request.content)
        self.bodies.append(body)
        user = body["messages"][-1]["content"]
        if "estimate the minimum number of tokens" in user:
            text = "Budget: 40" if NO_STRICT_BUDGET in user else "Budget: [[5]]"
        else:
            text = "The answer is [[1]]."
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        payload = {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"], "choices": [choice],
                   "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}}
        return httpx2.Response(200, json=payload)

    async def _arespond(self, request):
        return self._respond(request)

    def make_generator(self, spec, *, temperature=None, seed=None, paper=False, **_):
        assert paper, "tale eval --paper must build its model in paper mode"
        base = {"base_url": "http://scripted.invalid/v1", "api_key": "k", "max_retries": 0}
        sync = openai.OpenAI(http_client=httpx2.Client(transport=httpx2.MockTransport(self._respond)), **base)
        asynchronous = openai.AsyncOpenAI(
            http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(self._arespond)), **base)
        gen = OpenAIGenerator(spec.removeprefix("openai:"), client=sync, async_client=asynchronous,
                              temperature=temperature, seed=seed)
        return gen, True

    def sent(self, text):
        """The bodies whose last user message contains ``text``."""
        return [b for b in self.bodies if text in b["messages"][-1]["content"]]


def run(argv):
    parser = argparse.ArgumentParser(prog="tale")
    add_eval_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


def test_tale_eval_paper_sends_the_scripts_prompts_byte_for_byte(monkeypatch, tmp_path, write_jsonl, capsys):
    import tale_integrations.eval.cli as cli

    api = ScriptedAPI()
    monkeypatch.setattr(cli, "make_generator", api.make_generator)
    monkeypatch.setenv("TALE_DATA_DIR", str(data_dir(tmp_path, write_jsonl)))
    out = tmp_path / "run"
    assert run(["eval", "--paper", "--dataset", "gsm8k,gsm8k-zero,mathbench-arithmetic,mathbench-middle",
                "--methods", "tale-ep,vanilla,direct", "--model", "openai:gpt-4o-mini", "--out", str(out),
                "--no-progress", "--concurrency", "1"]) == 0

    # every call: the scripts' system message, one user message, the paper's sampling settings
    assert api.bodies and all(b["messages"][0] == SYSTEM and len(b["messages"]) == 2 for b in api.bodies)
    assert {(b["temperature"], b["seed"]) for b in api.bodies} == {(0.1, 1024)}
    assert {b["max_tokens"] for b in api.bodies if "estimate the minimum" not in b["messages"][-1]["content"]} == {1024}

    def users(text):
        return sorted(b["messages"][1]["content"] for b in api.sent(text))

    word_prompt = GSM8K_VANILLA.format(question=WORD)
    # GSM8K: the estimator quotes the whole chain-of-thought prompt; the raw estimate 5 stays 5
    assert users(WORD) == sorted([ESTIMATION.format(question=word_prompt), GSM8K.format(question=WORD, budget=5),
                                  word_prompt, cli_direct(WORD)])
    # MathBench arithmetic: the cloze prompts
    cloze = CLOZE_VANILLA.format(question=ARITH)
    assert users(ARITH) == sorted([ESTIMATION.format(question=cloze), CLOZE.format(question=ARITH, budget=5),
                                   cloze, CLOZE_DIRECT.format(question=ARITH)])
    # MathBench multiple choice: the estimator quotes the stem and its option lines
    assert users(STEM) == sorted([ESTIMATION.format(question=CHOICE_QUESTION), CHOICE.format(question=CHOICE_QUESTION,
                                  budget=5), CHOICE.format(question=CHOICE_QUESTION, budget=5).replace(
                                  " and use less than 5 tokens", ""), CHOICE_DIRECT.format(question=CHOICE_QUESTION)])
    # a reply with no [[N]]: plain chain-of-thought, recorded as a parse failure
    hard = [b["messages"][1]["content"] for b in api.sent(NO_STRICT_BUDGET)]
    assert GSM8K_VANILLA.format(question=NO_STRICT_BUDGET) in hard and not any("use less than" in h for h in hard)

    files = {(f.header["dataset"], f.header["method"]): f for f in load_results(out)}
    assert {f.header["style"] for f in files.values()} == {"paper"}
    assert files[("mathbench-arithmetic", "tale-ep")].header["format"] == "cloze"
    assert files[("gsm8k", "tale-ep")].header["policy"]["min_budget"] == 1
    records = {r["question"]: r for r in files[("gsm8k-zero", "tale-ep")].records}
    assert (records[ZERO]["budget"], records[ZERO]["budget_raw"], records[ZERO]["budget_adjusted"]) == (5, 5, None)
    assert (records[NO_STRICT_BUDGET]["budget"], records[NO_STRICT_BUDGET]["budget_adjusted"]) == (None, "parse failed")
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "Prompt style: **paper**" in report and "Prompt style: **paper**" in capsys.readouterr().out


def cli_direct(question):
    return ("Please answer the following question and give the answer directly without any reasoning process. Please "
            "Give the response by strictly following this format: [[answer]], for example: Answer: [[50]].\n"
            f"Q: {question}")


def test_the_default_style_keeps_its_floor_and_says_so(monkeypatch, tmp_path, write_jsonl):
    import tale_integrations.eval.cli as cli

    api = ScriptedAPI()
    monkeypatch.setattr(cli, "make_generator",
                        lambda spec, **k: ScriptedAPI.make_generator(api, spec, **{**k, "paper": True}))
    monkeypatch.setenv("TALE_DATA_DIR", str(data_dir(tmp_path, write_jsonl)))
    out = tmp_path / "run"
    assert run(["eval", "--dataset", "gsm8k", "--methods", "tale-ep", "--model", "openai:gpt-4o-mini",
                "--out", str(out), "--no-progress"]) == 0
    answer = [b for b in api.bodies if "estimate the minimum" not in b["messages"][-1]["content"]]
    assert answer[0]["messages"] == [{"role": "user", "content": GSM8K.format(question=WORD, budget=20)}]
    assert answer[0]["max_tokens"] == 512 and "temperature" not in answer[0]
    (header,) = [f.header for f in load_results(out)]
    assert header["style"] == "default" and header["format"] == "gsm8k"
    assert "Prompt style: default" in (out / "report.md").read_text(encoding="utf-8")
