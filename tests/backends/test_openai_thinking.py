"""`OpenAIGenerator` on thinking models: the knob in the request (the real openai SDK on a mock transport),
the reasoning text and tokens in the `Generation`."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("openai")
httpx2 = pytest.importorskip("httpx2")

from vendor_mocks import Capture, openai_reply  # noqa: E402

from tale_integrations.backends.openai import OpenAIGenerator  # noqa: E402
from tale_integrations.core.errors import TaleValueError  # noqa: E402
from tale_integrations.core.thinking import ThinkingPolicy, find_thinking_model, thinking_knob  # noqa: E402

MESSAGES = [{"role": "user", "content": "What is 2 + 3?"}]
RESERVE = ThinkingPolicy().answer_reserve


def generator(model: str, *replies: Any, **kwargs: Any) -> tuple[OpenAIGenerator, Capture]:
    import openai

    capture = Capture(httpx2, *(replies or (openai_reply("5"),)))
    base = {"base_url": "http://mock.invalid/v1", "api_key": "k", "max_retries": 0}
    sync = openai.OpenAI(http_client=capture.client(), **base)
    asynchronous = openai.AsyncOpenAI(http_client=capture.async_client(), **base)
    return OpenAIGenerator(model, client=sync, async_client=asynchronous, **kwargs), capture


def test_reasoning_models_are_detected_by_name():
    assert generator("o3")[0].thinking.family == "o-series"
    assert generator("gpt-5-mini")[0].thinking.family == "gpt-5"
    assert generator("gpt-4o-mini")[0].thinking is None
    assert generator("o3", thinking=False)[0].thinking is None
    assert generator("my-deployment", thinking=True)[0].thinking.family == "openai (declared)"
    assert generator("Qwen/Qwen3-8B")[0].thinking is None  # the server must be named
    assert generator("Qwen/Qwen3-8B", thinking="sglang")[0].thinking.engine == "sglang"


def test_plain_calls_are_unchanged():
    gen, capture = generator("o3")
    gen.generate([MESSAGES], max_tokens=50)
    assert capture.body == {"model": "o3", "messages": MESSAGES, "max_completion_tokens": 50}


def test_thinking_budgets_go_through_the_knob():
    gen, capture = generator("o3")
    first, second = gen.generate([MESSAGES, MESSAGES], thinking_budgets=[300, None])
    bodies = sorted(capture.bodies, key=lambda b: "reasoning_effort" in b)
    assert bodies[1] == {"model": "o3", "messages": MESSAGES, "reasoning_effort": "low",
                         "max_completion_tokens": 2048 + RESERVE}
    assert bodies[0] == {"model": "o3", "messages": MESSAGES}  # unlimited: the model's own effort, no cap
    assert first.usage.reasoning_tokens == 4 and first.text == "5"
    assert gen.thinking_knob(300).fields == {"reasoning_effort": "low", "max_completion_tokens": 2048 + RESERVE}


def test_the_call_cap_is_the_knobs_limit():
    gen, capture = generator("o3", max_tokens=2500)
    gen.generate([MESSAGES], thinking_budgets=[300])
    assert capture.body["max_completion_tokens"] == 2500
    gen.generate([MESSAGES], max_tokens=1000, thinking_budgets=[5000])
    assert capture.body == {"model": "o3", "messages": MESSAGES, "reasoning_effort": "medium",
                            "max_completion_tokens": 1000}


async def test_async_twin_and_policy():
    gen, capture = generator("gpt-5", thinking_policy=ThinkingPolicy(answer_reserve=100))
    [g] = await gen.agenerate([MESSAGES], thinking_budgets=[100])
    assert capture.body["reasoning_effort"] == "minimal" and capture.body["max_completion_tokens"] == 256 + 100
    assert g.text == "5"


def test_vllm_budget_is_top_level_beside_the_users_extra_body():
    reply = openai_reply("5", reasoning_text="2 + 3 = 5")
    gen, capture = generator("Qwen/Qwen3-8B", reply, thinking="vllm", extra_body={"chat_template_kwargs": {"a": 1}})
    [g] = gen.generate([MESSAGES], thinking_budgets=[40])
    assert capture.body == {"model": "Qwen/Qwen3-8B", "messages": MESSAGES, "max_tokens": 40 + RESERVE,
                            "thinking_token_budget": 40, "chat_template_kwargs": {"a": 1}}
    assert g.reasoning == "2 + 3 = 5" and g.usage.reasoning_tokens == 4


def test_sglang_fields_and_reasoning_content():
    def reply(body: dict[str, Any]) -> dict[str, Any]:
        out = openai_reply("5")(body)
        out["choices"][0]["message"]["reasoning_content"] = "thought"
        out["usage"] = {"prompt_tokens": 3, "completion_tokens": 9, "total_tokens": 12, "reasoning_tokens": 6}
        return out

    gen, capture = generator("Qwen/Qwen3-8B", reply, thinking="sglang")
    [g] = gen.generate([MESSAGES], thinking_budgets=[40])
    assert capture.body["custom_params"] == {"thinking_budget": 40} and capture.body["max_tokens"] == 40 + RESERVE
    assert g.reasoning == "thought" and g.usage.reasoning_tokens == 6


def test_a_knob_given_as_is():
    gen, capture = generator("o3")
    knob = thinking_knob(find_thinking_model("o3"), 9000, model="o3")
    refused = thinking_knob(find_thinking_model("claude-sonnet-4-5"), 30, limit=500)
    gen.generate([MESSAGES, MESSAGES], max_tokens=77, thinking_budgets=[knob, refused])
    bodies = sorted(capture.bodies, key=lambda b: "reasoning_effort" in b)
    assert bodies[1]["reasoning_effort"] == "high" and bodies[1]["max_completion_tokens"] == knob.max_tokens
    assert bodies[0] == {"model": "o3", "messages": MESSAGES, "max_completion_tokens": 77}  # not applied: the cap


def test_bad_thinking_calls():
    gen, _ = generator("gpt-4o-mini")
    with pytest.raises(TaleValueError, match="need a thinking model"):
        gen.generate([MESSAGES], thinking_budgets=[40])
    gen, _ = generator("o3")
    with pytest.raises(TaleValueError, match="one budget"):
        gen.generate([MESSAGES], thinking_budgets=[40, 50])
    with pytest.raises(TaleValueError, match="cannot carry the anthropic knob"):
        generator("claude-sonnet-4-5", thinking="anthropic")
    gen.thinking = "llamacpp"
    assert gen.thinking.budget_field == "thinking_budget_tokens"
    assert gen.generate([], thinking_budgets=[]) == []
