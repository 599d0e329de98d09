"""The knob table against each vendor SDK's own request building (no network).

For every row of `core.thinking.THINKING_MODELS`, the fields `thinking_knob` gives for budgets from 1
to a million are handed to the vendor's official SDK (openai, anthropic, google-genai, ollama) whose
HTTP client is an in-process mock transport; the JSON body the SDK would send is captured and
checked: the field names (as the SDK writes them), the minimum and maximum of each numeric budget,
the output cap above budget + answer reserve and within the model's limit, the levels within both
the row's and the SDK's own enumeration, and never both Gemini knobs. The SDKs' typed parameter
definitions are checked for the same names. vLLM, SGLang and llama.cpp have no SDK of their own:
their fields go through `OpenAIGenerator` and the openai SDK (``extra_body``), and must land at the
top level of the body (a budget inside ``chat_template_kwargs`` is silently ignored by vLLM).
"""

from __future__ import annotations

import inspect
import typing
from typing import Any

import pytest
from vendor_mocks import Capture, anthropic_reply, gemini_reply, ollama_reply, openai_reply

from tale_integrations.core.thinking import (
    THINKING_MODELS,
    Engine,
    ThinkingModel,
    ThinkingPolicy,
    find_thinking_model,
    thinking_knob,
)

BUDGETS = (1, 40, 300, 1500, 5000, 30000, 10**6)
LIMITS = (None, 3000)
RESERVE = ThinkingPolicy().answer_reserve

#: One model name per named row (a new row must add its example here).
EXAMPLES = {
    "o1-mini / o1-preview (no effort setting)": "o1-mini", "o-series": "o4-mini", "gpt-5-pro": "gpt-5-pro",
    "gpt-5": "gpt-5-mini", "gpt-5.1-codex-max": "gpt-5.1-codex-max", "gpt-5.1": "gpt-5.1",
    "gpt-5.2 to 5.5": "gpt-5.4", "gpt-5.6 and later": "gpt-5.6", "openai (declared)": "my-azure-deployment",
    "claude 3.7 sonnet (budget_tokens)": "claude-3-7-sonnet-20250219",
    "claude opus 4 / 4.1 (budget_tokens)": "claude-opus-4-1-20250805",
    "claude sonnet 4 (budget_tokens)": "claude-sonnet-4-20250514", "claude 4.5 (budget_tokens)": "claude-sonnet-4-5",
    "claude 4.6 (budget_tokens)": "claude-opus-4-6", "claude opus 4.7+ (adaptive, effort)": "claude-opus-4-7",
    "claude haiku 5.x (adaptive, effort)": "claude-haiku-5-5", "claude 5.x (adaptive, effort)": "claude-sonnet-5",
    "anthropic (declared, adaptive)": "claude-next",
    "gemini 2.5 pro": "gemini-2.5-pro", "gemini 2.5 flash-lite": "gemini-2.5-flash-lite",
    "gemini 2.5 flash": "gemini-2.5-flash", "gemini 3 pro": "gemini-3-pro-preview",
    "gemini 3.x pro": "gemini-3.1-pro-preview", "gemini 3+ flash": "gemini-3-flash-preview",
    "gemini 3+ (other)": "gemini-4-argon", "gemini (declared)": "gemini-next",
    "ollama gpt-oss (think level)": "gpt-oss:20b", "ollama thinking model (think on)": "qwen3:8b",
    "ollama (declared, think on)": "llama3.2",
    "vllm": "Qwen/Qwen3-8B", "sglang (strict thinking)": "Qwen/Qwen3-8B", "llama.cpp server": "qwen3-8b-q4",
    "local thinking template": "tiny",
}


def rows(*engines: Engine) -> list[ThinkingModel]:
    return [r for r in THINKING_MODELS if r.engine in engines]


def cases(*engines: Engine) -> list[tuple[ThinkingModel, int, int | None]]:
    return [(r, b, limit) for r in rows(*engines) for b in BUDGETS for limit in LIMITS]


def ids(case: tuple[ThinkingModel, int, int | None]) -> str:
    r, b, limit = case
    return f"{EXAMPLES[r.family]}-{b}-{limit}"


def test_every_row_has_an_example():
    assert set(EXAMPLES) == {r.family for r in THINKING_MODELS}
    for r in THINKING_MODELS:
        assert r.pattern is None or r.matches(EXAMPLES[r.family]), r.family


def knob_for(r: ThinkingModel, budget: int, limit: int | None):
    k = thinking_knob(r, budget, model=EXAMPLES[r.family], limit=limit)
    assert k.applied, k.adjusted  # every row honours every budget under these limits
    return k


def check_cap(r: ThinkingModel, k: Any, cap: int, limit: int | None) -> None:
    assert cap == k.max_tokens
    for bound in (r.max_output_tokens, limit):
        assert bound is None or cap <= bound
    thinking = k.budget if k.budget is not None else None
    if thinking is not None:
        assert cap > thinking  # every engine counts thinking inside the cap
        if k.adjusted is None or "reserve cut" not in k.adjusted:
            assert cap >= thinking + RESERVE


# -- OpenAI -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def openai_sdk():
    openai = pytest.importorskip("openai")
    httpx2 = pytest.importorskip("httpx2")
    capture = Capture(httpx2, openai_reply())
    return openai, openai.OpenAI(api_key="k", base_url="http://mock.invalid/v1", http_client=capture.client(),
                                 max_retries=0), capture


def test_openai_sdk_names_the_fields():
    from openai.types.chat.completion_create_params import CompletionCreateParamsBase
    from openai.types.shared.reasoning_effort import ReasoningEffort

    assert {"reasoning_effort", "max_completion_tokens"} <= set(CompletionCreateParamsBase.__annotations__)
    sdk_levels = set(typing.get_args(typing.get_args(ReasoningEffort)[0]))
    for r in rows(Engine.OPENAI):
        assert set(r.levels) <= sdk_levels, r.family


@pytest.mark.parametrize("case", cases(Engine.OPENAI), ids=ids)
def test_openai_body(openai_sdk, case):
    openai, client, capture = openai_sdk
    r, budget, limit = case
    k = knob_for(r, budget, limit)
    client.chat.completions.create(model=EXAMPLES[r.family], messages=[{"role": "user", "content": "2+3?"}],
                                   **k.fields)
    body = capture.bodies[-1]
    assert "max_tokens" not in body  # reasoning models refuse it
    check_cap(r, k, body["max_completion_tokens"], limit)
    if r.level_field:
        assert body["reasoning_effort"] == k.level and k.level in r.levels and k.level != "none"
    else:
        assert "reasoning_effort" not in body


# -- vLLM, SGLang, llama.cpp (through OpenAIGenerator and the openai SDK) -----------------------------


@pytest.mark.parametrize("case", cases(Engine.VLLM, Engine.SGLANG, Engine.LLAMACPP), ids=ids)
def test_openai_compatible_servers_body(openai_sdk, case):
    from tale_integrations.backends.openai import OpenAIGenerator

    openai, client, capture = openai_sdk
    r, budget, limit = case
    gen = OpenAIGenerator(EXAMPLES[r.family], client=client, thinking=str(r.engine), max_tokens=limit,
                          extra_body={"chat_template_kwargs": {"enable_thinking": True}})
    [g] = gen.generate([[{"role": "user", "content": "2+3?"}]], thinking_budgets=[budget])
    body = capture.bodies[-1]
    k = gen.thinking_knob(budget)
    assert g.usage.reasoning_tokens == 4 and body["chat_template_kwargs"] == {"enable_thinking": True}
    sent = {Engine.VLLM: lambda b: b["thinking_token_budget"],
            Engine.SGLANG: lambda b: b["custom_params"]["thinking_budget"],
            Engine.LLAMACPP: lambda b: b["thinking_budget_tokens"]}[r.engine](body)
    assert sent == k.budget >= 1 and (limit is not None or sent == budget)
    check_cap(r, k, body["max_tokens"], limit)
    assert "max_completion_tokens" not in body


# -- Anthropic ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def anthropic_sdk():
    anthropic = pytest.importorskip("anthropic")
    httpx2 = pytest.importorskip("httpx2")
    capture = Capture(httpx2, anthropic_reply())
    # a timeout of our own: at its default one the SDK refuses non-streaming requests whose max_tokens
    # could take over 10 minutes (above about 21,333), a client-side rule, not the API's
    return anthropic.Anthropic(api_key="k", http_client=capture.client(), max_retries=0, timeout=60), capture


def test_anthropic_sdk_names_the_fields():
    from anthropic.types.message_create_params import MessageCreateParamsBase
    from anthropic.types.output_config_param import OutputConfigParam
    from anthropic.types.thinking_config_adaptive_param import ThinkingConfigAdaptiveParam
    from anthropic.types.thinking_config_enabled_param import ThinkingConfigEnabledParam

    assert {"thinking", "output_config", "max_tokens"} <= set(MessageCreateParamsBase.__annotations__)
    assert set(ThinkingConfigEnabledParam.__annotations__) >= {"type", "budget_tokens"}
    assert "type" in ThinkingConfigAdaptiveParam.__annotations__
    effort = typing.get_type_hints(OutputConfigParam)["effort"]
    sdk_levels = set(typing.get_args(typing.get_args(effort)[0]))
    # the SDK states the rule the table's rows follow (minimum and strict maximum)
    assert "Must be ≥1024 and less than `max_tokens`" in inspect.getsource(ThinkingConfigEnabledParam)
    assert {r.budget_min for r in rows(Engine.ANTHROPIC) if r.budget_field} == {1024}
    for r in rows(Engine.ANTHROPIC):
        assert set(r.levels) <= sdk_levels, r.family
    # the models the SDK warns about for the budget form (deprecated, still accepted) are in the table
    from anthropic._data import MODELS_TO_WARN_WITH_THINKING_ENABLED

    assert all(find_thinking_model(m) is not None for m in MODELS_TO_WARN_WITH_THINKING_ENABLED)


@pytest.mark.filterwarnings("ignore:Using Claude with:UserWarning")  # 4.6's budget form: deprecated, accepted
@pytest.mark.parametrize("case", cases(Engine.ANTHROPIC), ids=ids)
def test_anthropic_body(anthropic_sdk, case):
    client, capture = anthropic_sdk
    r, budget, limit = case
    k = knob_for(r, budget, limit)
    client.messages.create(model=EXAMPLES[r.family], messages=[{"role": "user", "content": "2+3?"}], **k.fields)
    body = capture.bodies[-1]
    check_cap(r, k, body["max_tokens"], limit)
    if r.budget_field:  # the models that take budget_tokens: at least 1024, below max_tokens
        assert body["thinking"] == {"type": "enabled", "budget_tokens": k.budget}
        assert 1024 <= body["thinking"]["budget_tokens"] < body["max_tokens"]
        assert "output_config" not in body
    else:  # 4.7+: adaptive thinking and an effort, never budget_tokens
        assert body["thinking"] == {"type": "adaptive"}
        assert body["output_config"] == {"effort": k.level} and k.level in r.levels


# -- Gemini (google-genai) ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def genai_sdk():
    genai = pytest.importorskip("google.genai")
    httpx = pytest.importorskip("httpx")
    capture = Capture(httpx, gemini_reply())
    options = genai.types.HttpOptions(httpx_client=capture.client())
    return genai, genai.Client(api_key="k", http_options=options), capture


def test_genai_sdk_names_the_fields(genai_sdk):
    genai = genai_sdk[0]
    types = genai.types
    assert {"thinking_config", "max_output_tokens"} <= set(types.GenerateContentConfig.model_fields)
    assert {"thinking_budget", "thinking_level"} <= set(types.ThinkingConfig.model_fields)
    import pydantic

    with pytest.raises(pydantic.ValidationError):  # the SDK refuses a misspelt field: the bodies prove the names
        types.ThinkingConfig(thinking_tokens=5)
    sdk_levels = {m.value.lower() for m in types.ThinkingLevel} - {"thinking_level_unspecified"}
    for r in rows(Engine.GEMINI):
        assert set(r.levels) <= sdk_levels, r.family


@pytest.mark.parametrize("case", cases(Engine.GEMINI), ids=ids)
def test_gemini_body(genai_sdk, case):
    genai, client, capture = genai_sdk
    r, budget, limit = case
    k = knob_for(r, budget, limit)
    response = client.models.generate_content(model=EXAMPLES[r.family], contents="2+3?",
                                              config=genai.types.GenerateContentConfig(**k.fields))
    assert response.usage_metadata.thoughts_token_count == 4
    config = capture.bodies[-1]["generationConfig"]
    check_cap(r, k, config["maxOutputTokens"], limit)
    thinking = config["thinkingConfig"]
    assert len(thinking) == 1  # a budget or a level, never both
    if r.budget_field:
        [sent] = thinking.values()
        assert sent == k.budget and r.budget_min <= sent <= r.budget_max
    else:
        [sent] = thinking.values()
        assert sent == k.level.upper() and k.level in r.levels


# -- Ollama -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ollama_sdk():
    ollama = pytest.importorskip("ollama")
    httpx = pytest.importorskip("httpx")
    capture = Capture(httpx, ollama_reply())
    return ollama.Client(host="http://mock.invalid", transport=httpx.MockTransport(capture.handler)), capture


@pytest.mark.parametrize("case", cases(Engine.OLLAMA), ids=ids)
def test_ollama_body(ollama_sdk, case):
    client, capture = ollama_sdk
    r, budget, limit = case
    k = knob_for(r, budget, limit)
    response = client.chat(model=EXAMPLES[r.family], messages=[{"role": "user", "content": "2+3?"}], **k.fields)
    assert response.message.thinking == "2+3"
    body = capture.bodies[-1]
    check_cap(r, k, body["options"]["num_predict"], limit)
    assert body["think"] in ((k.level,) if r.level_field else (True,))
