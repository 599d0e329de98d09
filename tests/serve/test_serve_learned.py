"""`tale serve --estimator learned`: ``"tale_budget": "auto"`` takes its budget from the shipped learned
estimator, so the scheduler sees one request (the answer) and the ``tale`` object reports the
estimator ``"learned"`` with zero tokens. The budget equals the one every other integration gives
(``tests/test_learned_everywhere.py``)."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("torch")

from tale_integrations.core.budget import BudgetPolicy  # noqa: E402
from tale_integrations.core.learned import default_learned_estimator  # noqa: E402
from tale_integrations.core.prompts import question_prompt  # noqa: E402
from tale_integrations.serve.cli import add_serve_parser  # noqa: E402

QUESTION = "A shop sells pens at $2 each. Ann buys 12 pens and pays with a $50 bill. How much change does she get?"
[_ESTIMATE] = default_learned_estimator().estimate([QUESTION])
RAW = _ESTIMATE.raw
BUDGET = BudgetPolicy().resolve(RAW, source="learned").tokens
MAX_TOKENS = 60  # above BUDGET: the request's cap does not lower it


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def spy(app: Any) -> list[dict[str, Any]]:
    """Record every request the app's scheduler is given (the answer, and any estimator call)."""
    scheduler = app.state.batcher.scheduler
    calls: list[dict[str, Any]] = []
    original = scheduler.submit

    def wrapper(messages, **kwargs):
        calls.append({"prompts": messages, **kwargs})
        return original(messages, **kwargs)

    scheduler.submit = wrapper
    return calls


def check_tale(tale: dict[str, Any]) -> None:
    """The budget record with the keys and values every integration writes (the pipeline's, here)."""
    from tale_integrations import FunctionGenerator, TalePipeline
    from tale_integrations.core.decision import RECORD_KEYS

    assert tale["estimator"] == "learned"
    assert tale["estimator_usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0,
                                     "completion_tokens_details": {"reasoning_tokens": 0}}
    assert (tale["budget"], tale["budget_raw"], tale["budget_source"], tale["budget_adjusted"]) == (
        BUDGET, RAW, "learned", None)
    assert tale["enforced"] is False
    pipeline = TalePipeline(FunctionGenerator(lambda messages, **_: "x"), estimator="learned", format="chat",
                            max_tokens=MAX_TOKENS).invoke(QUESTION).to_dict()
    assert set(RECORD_KEYS) <= set(tale)
    keys = [k for k in RECORD_KEYS if k != "estimator_usage"]  # usage: each framework's own form
    assert {k: tale[k] for k in keys} == {k: pipeline[k] for k in keys}


def test_the_budget_fits_the_request():
    assert 20 < BUDGET == RAW < MAX_TOKENS


def test_auto_budget_comes_from_the_learned_estimator(serve, seven):
    url = serve(seven, estimator="learned")
    calls = spy(serve.last.app)
    r = client(url).chat.completions.create(model="seven", messages=user(QUESTION), max_tokens=MAX_TOKENS,
                                            extra_body={"tale_budget": "auto"})
    check_tale(r.model_dump()["tale"])
    budgeted = user(question_prompt(QUESTION, budget=BUDGET, format="chat"))
    [call] = calls  # the answer only: no estimator call reached the scheduler
    assert call["prompts"] == budgeted and call.get("listener") is None
    assert r.usage.prompt_tokens == len(seven.encode_chat(budgeted))
    assert r.usage.completion_tokens == MAX_TOKENS and r.choices[0].message.content == " 7" * MAX_TOKENS


def test_auto_budget_streams_the_learned_tale_object(serve, seven):
    url = serve(seven, estimator="learned")
    calls = spy(serve.last.app)
    chunks = list(client(url).chat.completions.create(
        model="seven", messages=user(QUESTION), max_tokens=5, stream=True, extra_body={"tale_budget": "auto"}))
    tale = chunks[0].model_dump()["tale"]
    # The request's max_tokens (5) caps the estimate, exactly as for the zero-shot estimator.
    assert (tale["budget"], tale["budget_raw"], tale["estimator"]) == (5, RAW, "learned")
    assert "lowered to cap" in tale["budget_adjusted"] and tale["estimator_usage"]["total_tokens"] == 0
    [stream] = calls  # the streamed answer only: no estimator call went through the scheduler
    assert stream["prompts"] == user(question_prompt(QUESTION, budget=5, format="chat"))
    assert stream["listener"] is not None
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == " 7" * 5


def test_serve_cli_estimator_learned_reaches_the_app(monkeypatch, tiny_model_dir):
    """``tale serve --estimator learned``: the app the command builds answers "auto" with the learned
    estimator (uvicorn.run replaced by a recorder, as in test_serve_cli.py; the app then served in-process)."""
    uvicorn = pytest.importorskip("uvicorn")
    from fastapi.testclient import TestClient

    seen: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: seen.update(app=app))
    root = argparse.ArgumentParser(prog="tale")
    add_serve_parser(root.add_subparsers(dest="command", required=True))
    assert root.parse_args(["serve"]).estimator == "zero-shot"  # the paper's default is kept
    args = root.parse_args(["serve", "--model", str(tiny_model_dir), "--estimator", "learned",
                            "--served-model-name", "tiny"])
    assert args.handler(args) == 0
    app = seen["app"]
    calls = spy(app)
    with TestClient(app, base_url="http://127.0.0.1") as http:  # bound to loopback: loopback host names only
        r = http.post("/v1/chat/completions", json={"model": "tiny", "messages": user(QUESTION),
                                                    "max_tokens": MAX_TOKENS, "tale_budget": "auto"})
    assert r.status_code == 200, r.text
    check_tale(r.json()["tale"])
    [call] = calls
    assert call["prompts"] == user(question_prompt(QUESTION, budget=BUDGET, format="chat"))
