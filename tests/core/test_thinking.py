"""`core.thinking`: the knob table, model detection, the budget → knob mapping and its clamping.

The request bodies the vendor SDKs build from these fields are checked in test_thinking_sdks.py.
"""

from __future__ import annotations

import re

import pytest

from tale_integrations.core.budget import Budget
from tale_integrations.core.decision import RECORD_KEYS, BudgetRecord
from tale_integrations.core.errors import TaleError, TaleTypeError, TaleValueError
from tale_integrations.core.thinking import (
    LEVELS,
    THINKING_MODELS,
    Engine,
    ThinkingKnob,
    ThinkingModel,
    ThinkingPolicy,
    find_thinking_model,
    looks_like_thinking_model,
    normalize_model_name,
    resolve_thinking,
    thinking_knob,
)

RESERVE = ThinkingPolicy().answer_reserve


def row(model: str, engine: str | None = None) -> ThinkingModel:
    found = find_thinking_model(model, engine)
    assert found is not None, model
    return found


# -- the table ---------------------------------------------------------------------------------------


def test_every_row_is_consistent():
    for r in THINKING_MODELS:
        assert not (r.budget_field and r.level_field), r.family
        assert all(lv in LEVELS for lv in r.levels)
        if r.engine is Engine.ANTHROPIC:
            assert r.cap_required and r.cap_field == "max_tokens"
        if r.budget_field and r.engine is Engine.ANTHROPIC:
            assert r.budget_min == 1024 and r.budget_required
    # one default row (for declared models) per engine, the last of its engine (first match wins)
    for engine in Engine:
        rows = [r for r in THINKING_MODELS if r.engine is engine]
        assert [r.pattern is None for r in rows] == [False] * (len(rows) - 1) + [True], engine


@pytest.mark.parametrize(("model", "family"), [
    ("o1", "o-series"), ("o3-mini", "o-series"), ("o4-mini-2025-04-16", "o-series"), ("openai/o3", "o-series"),
    ("o1-mini", "o1-mini / o1-preview (no effort setting)"),
    ("gpt-5", "gpt-5"), ("gpt-5-mini-2025-08-07", "gpt-5"), ("GPT-5-nano", "gpt-5"), ("ft:gpt-5-mini:org::x", "gpt-5"),
    ("gpt-5-pro", "gpt-5-pro"), ("gpt-5.1", "gpt-5.1"), ("gpt-5.1-codex-max", "gpt-5.1-codex-max"),
    ("gpt-5.2", "gpt-5.2 to 5.5"), ("gpt-5.5-pro", "gpt-5.2 to 5.5"), ("gpt-5.6", "gpt-5.6 and later"),
    ("gpt-6-sol", "gpt-5.6 and later"),
    ("claude-3-7-sonnet-20250219", "claude 3.7 sonnet (budget_tokens)"),
    ("claude-opus-4-20250514", "claude opus 4 / 4.1 (budget_tokens)"),
    ("claude-opus-4-1", "claude opus 4 / 4.1 (budget_tokens)"),
    ("claude-sonnet-4-20250514", "claude sonnet 4 (budget_tokens)"),
    ("claude-sonnet-4-5-20250929", "claude 4.5 (budget_tokens)"), ("claude-haiku-4-5", "claude 4.5 (budget_tokens)"),
    ("anthropic.claude-sonnet-4-5-20250929-v1:0", "claude 4.5 (budget_tokens)"),
    ("claude-opus-4-6", "claude 4.6 (budget_tokens)"), ("claude-sonnet-4-6", "claude 4.6 (budget_tokens)"),
    ("claude-opus-4-7", "claude opus 4.7+ (adaptive, effort)"),
    ("claude-opus-4-8", "claude opus 4.7+ (adaptive, effort)"),
    ("claude-sonnet-5", "claude 5.x (adaptive, effort)"), ("claude-opus-5-5", "claude 5.x (adaptive, effort)"),
    ("claude-fable-5-1", "claude 5.x (adaptive, effort)"), ("claude-haiku-5-5", "claude haiku 5.x (adaptive, effort)"),
    ("gemini-2.5-pro", "gemini 2.5 pro"), ("models/gemini-2.5-flash", "gemini 2.5 flash"),
    ("gemini-2.5-flash-lite", "gemini 2.5 flash-lite"), ("gemini-3-pro-preview", "gemini 3 pro"),
    ("gemini-3.1-pro-preview", "gemini 3.x pro"), ("gemini-3-flash-preview", "gemini 3+ flash"),
    ("gemini-3.5-flash-lite", "gemini 3+ flash"), ("gemini-4-argon", "gemini 3+ (other)"),
])
def test_vendor_models_are_found_by_name(model, family):
    assert row(model).family == family
    assert looks_like_thinking_model(model)


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4.1-mini", "gpt-5-chat-latest", "gpt-5.1-chat-latest", "omni",
                                   "claude-3-5-sonnet-20241022", "claude-3-haiku", "gemini-2.0-flash",
                                   "gemini-3-pro-image-preview", "gemini-2.5-flash-image", "llama-3.1-8b"])
def test_other_models_are_not_thinking_models(model):
    assert find_thinking_model(model) is None
    assert resolve_thinking(None, model) is None


def test_open_weights_engines_are_declared():
    # the name alone never picks vLLM, SGLang or llama.cpp: the same model runs on all of them
    assert find_thinking_model("Qwen/Qwen3-8B") is None and looks_like_thinking_model("Qwen/Qwen3-8B")
    assert row("Qwen/Qwen3-8B", "vllm").budget_field == "thinking_token_budget"
    assert row("anything", "sglang").budget_field == "custom_params.thinking_budget"
    assert row("anything", "llamacpp").budget_field == "thinking_budget_tokens"
    assert row("x", "hf").budget_field == "thinking_budget"
    # Ollama: gpt-oss takes a level, other thinking families only think=true, unknown names only when declared
    assert row("gpt-oss:20b", "ollama").levels == ("low", "medium", "high")
    assert row("qwen3:8b", "ollama").fixed == {"think": True}
    assert resolve_thinking(None, "llama3.2", engine="ollama") is None
    assert resolve_thinking("ollama", "llama3.2").family == "ollama (declared, think on)"


def test_resolve_thinking_declarations():
    assert resolve_thinking(None, "o3").family == "o-series"
    assert resolve_thinking(False, "o3") is None
    assert resolve_thinking(True, "o3").family == "o-series"
    assert resolve_thinking(True, "my-deployment", engine="openai").family == "openai (declared)"
    assert resolve_thinking(None, "my-deployment", engine="openai") is None  # default rows only when declared
    assert resolve_thinking("VLLM", "Qwen3").engine is Engine.VLLM
    custom = ThinkingModel(engine="vllm", family="mine", budget_field="thinking_token_budget")
    assert resolve_thinking(custom, "x") is custom
    with pytest.raises(TaleValueError, match="thinking='vllm'"):
        resolve_thinking(True, "llama-3.1-8b")
    with pytest.raises(TaleValueError, match="names no engine"):
        resolve_thinking("tgi", "x")
    with pytest.raises(TaleTypeError, match="ThinkingModel"):
        resolve_thinking(3, "x")


def test_normalize_model_name():
    assert normalize_model_name(" openai/GPT-5 ") == "gpt-5"
    assert normalize_model_name("models/gemini-2.5-pro") == "gemini-2.5-pro"
    assert normalize_model_name("us.anthropic.claude-opus-4-1-20250805-v1:0") == "claude-opus-4-1-20250805-v1:0"


def test_bad_rows_and_policies_are_refused():
    with pytest.raises(TaleValueError, match="not both"):
        ThinkingModel(engine="vllm", family="x", budget_field="a", level_field="b", levels=("low",))
    with pytest.raises(TaleValueError, match="accepted levels"):
        ThinkingModel(engine="openai", family="x", level_field="reasoning_effort")
    with pytest.raises(TaleValueError, match="weakest first"):
        ThinkingModel(engine="openai", family="x", level_field="e", levels=("high", "low"))
    with pytest.raises(TaleValueError, match="unknown levels"):
        ThinkingModel(engine="openai", family="x", level_field="e", levels=("huge",))
    with pytest.raises(ValueError):
        ThinkingModel(engine="tgi", family="x")
    with pytest.raises(TaleValueError, match="budget_max"):
        ThinkingModel(engine="vllm", family="x", budget_field="b", budget_min=10, budget_max=5)
    with pytest.raises(TaleValueError, match="rising ceilings"):
        ThinkingPolicy(level_ceilings=(("low", 100), ("minimal", 200)))
    with pytest.raises(TaleValueError, match="below 'max'"):
        ThinkingPolicy(level_ceilings=(("max", 100),))
    with pytest.raises(TaleError):
        ThinkingPolicy(answer_reserve=0)
    with pytest.raises(TaleValueError, match="positive int"):
        thinking_knob(row("o3"), 0)


# -- numeric budgets ---------------------------------------------------------------------------------


def test_numeric_budget_goes_to_its_field_with_the_cap_above_it():
    k = thinking_knob(row("Qwen3", "vllm"), Budget(tokens=300, raw=300, source="fixed"), model="Qwen3")
    assert k.fields == {"thinking_token_budget": 300, "max_tokens": 300 + RESERVE}
    assert (k.budget, k.level, k.max_tokens, k.applied, k.adjusted) == (300, None, 300 + RESERVE, True, None)
    assert "--reasoning-parser" in k.note and k.engine == "vllm" and k.model == "Qwen3"
    assert thinking_knob(row("x", "sglang"), 50).fields == {"custom_params": {"thinking_budget": 50},
                                                            "max_tokens": 50 + RESERVE}
    assert thinking_knob(row("x", "llamacpp"), 50).fields == {"thinking_budget_tokens": 50, "max_tokens": 50 + RESERVE}


def test_anthropic_minimum_is_raised_and_recorded():
    k = thinking_knob(row("claude-sonnet-4-5"), 40)
    assert k.fields == {"thinking": {"type": "enabled", "budget_tokens": 1024}, "max_tokens": 1024 + RESERVE}
    assert k.adjusted == "raised to the engine's minimum (1024)"
    assert k.fields["thinking"]["budget_tokens"] < k.fields["max_tokens"]


def test_gemini_ranges_are_kept():
    lite, pro, flash = row("gemini-2.5-flash-lite"), row("gemini-2.5-pro"), row("gemini-2.5-flash")
    assert thinking_knob(lite, 20).fields["thinking_config"] == {"thinking_budget": 512}
    assert thinking_knob(pro, 20).fields["thinking_config"] == {"thinking_budget": 128}
    assert thinking_knob(flash, 20).fields["thinking_config"] == {"thinking_budget": 20}
    high = thinking_knob(pro, 50000)
    assert high.budget == 32768 and "maximum thinking budget (32768)" in high.adjusted
    assert high.fields["max_output_tokens"] == 32768 + RESERVE


@pytest.mark.parametrize("limit", [64000, 5000, 3000])
def test_budget_above_the_output_limit_is_lowered_to_keep_the_reserve(limit):
    k = thinking_knob(row("claude-sonnet-4-5"), 100000, limit=None if limit == 64000 else limit)
    assert k.max_tokens == limit and k.budget == limit - RESERVE
    assert k.adjusted == f"lowered to fit the output limit ({limit}) with the answer reserve ({RESERVE})"


def test_a_tight_limit_cuts_the_reserve_then_refuses():
    cut = thinking_knob(row("claude-sonnet-4-5"), 40, limit=1500)
    assert (cut.budget, cut.max_tokens) == (1024, 1500)
    assert "answer reserve cut to 476" in cut.adjusted
    refused = thinking_knob(row("claude-sonnet-4-5"), 40, limit=1024)
    assert not refused.applied and refused.fields == {} and refused.max_tokens is None
    assert "no room above the engine's minimum thinking budget (1024)" in refused.adjusted
    # the record then says the prompt carried it
    record = BudgetRecord(budget=Budget(tokens=40), thinking=refused).to_dict()
    assert record["budget_via"] == "prompt" and record["thinking"]["applied"] is False


# -- levels ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("budget", "level"), [(1, "minimal"), (256, "minimal"), (257, "low"), (2048, "low"),
                                               (2049, "medium"), (8193, "high"), (32769, "xhigh"), (65537, "max")])
def test_default_level_thresholds(budget, level):
    assert ThinkingPolicy().level_for(budget) == level


@pytest.mark.parametrize(("level", "budget"), [("none", 0), ("minimal", 256), ("low", 2048), ("medium", 8192),
                                               ("high", 32768), ("xhigh", 65536), ("max", None)])
def test_a_level_stands_for_its_ceiling(level, budget):
    policy = ThinkingPolicy()
    assert policy.budget_for(level) == budget
    if budget:
        assert policy.level_for(budget) == level  # the inverse of level_for


def test_a_level_without_a_ceiling_takes_the_next_one_up():
    policy = ThinkingPolicy(level_ceilings=(("low", 100), ("high", 1000)))
    assert [policy.budget_for(lv) for lv in ("minimal", "low", "medium", "high", "xhigh")] == [100, 100, 1000, 1000,
                                                                                               None]
    with pytest.raises(TaleValueError, match="one of"):
        policy.budget_for("extreme")


@pytest.mark.parametrize(("model", "budget", "level"), [
    ("gpt-5", 20, "minimal"), ("o3", 20, "low"), ("gpt-5.1", 20, "low"),  # gpt-5.1's "none" is never chosen
    ("gpt-5-pro", 20, "high"), ("o3", 100000, "high"), ("gpt-5.6", 100000, "max"),
    ("claude-opus-4-7", 5000, "medium"), ("claude-haiku-5-5", 100000, "high"),
    ("gemini-3-pro-preview", 5000, "high"), ("gemini-3-flash-preview", 100, "minimal"),
])
def test_levels_snap_to_what_the_model_accepts(model, budget, level):
    r = row(model)
    k = thinking_knob(r, budget)
    assert k.level == level and level in r.levels and k.budget is None
    wanted = ThinkingPolicy().level_for(budget)
    assert (k.adjusted is not None and f"level {wanted!r} is not accepted" in k.adjusted) == (wanted != level)


def test_level_knob_fields_and_cap():
    o3 = thinking_knob(row("o3"), 300)
    assert o3.fields == {"reasoning_effort": "low", "max_completion_tokens": 2048 + RESERVE}
    opus = thinking_knob(row("claude-opus-4-7"), 300)
    assert opus.fields == {"thinking": {"type": "adaptive"}, "output_config": {"effort": "low"},
                           "max_tokens": 2048 + RESERVE}
    gem = thinking_knob(row("gemini-3-pro-preview"), 300)
    assert gem.fields == {"thinking_config": {"thinking_level": "low"}, "max_output_tokens": 2048 + RESERVE}
    assert "thinking_budget" not in gem.fields["thinking_config"]  # never both
    assert thinking_knob(row("gpt-oss:20b", "ollama"), 300).fields == {"think": "low",
                                                                       "options": {"num_predict": 2048 + RESERVE}}
    on = thinking_knob(row("qwen3:8b", "ollama"), 300)
    assert on.fields == {"think": True, "options": {"num_predict": 300 + RESERVE}}
    assert "only the output cap" in on.adjusted
    capped = thinking_knob(row("o3"), 100000)
    assert capped.max_tokens == 100000 and "output cap lowered to the output limit (100000)" in capped.adjusted


def test_custom_thresholds():
    policy = ThinkingPolicy(answer_reserve=100, level_ceilings=(("low", 10), ("medium", 20), ("high", 30)))
    assert thinking_knob(row("o3"), 15, policy=policy).fields == {"reasoning_effort": "medium",
                                                                  "max_completion_tokens": 120}
    assert policy.level_for(31) == "max" and policy.allowance("max", 31) == 31
    assert policy.to_dict() == {"answer_reserve": 100, "level_ceilings": [["low", 10], ["medium", 20], ["high", 30]]}


# -- unlimited and tool calls ------------------------------------------------------------------------


def test_unlimited_thinking_sends_only_what_the_engine_needs():
    assert thinking_knob(row("o3"), None).fields == {}
    assert thinking_knob(row("Qwen3", "vllm"), None).fields == {}
    assert thinking_knob(row("Qwen3", "vllm"), None, limit=4096).fields == {"max_tokens": 4096}
    claude = thinking_knob(row("claude-sonnet-4-5"), None)
    assert claude.fields == {"thinking": {"type": "enabled", "budget_tokens": 64000 - RESERVE}, "max_tokens": 64000}
    assert thinking_knob(row("claude-opus-4-7"), None).fields == {"thinking": {"type": "adaptive"},
                                                                  "max_tokens": 128000}
    no_limit = thinking_knob(ThinkingModel(engine="anthropic", family="x", budget_field="thinking.budget_tokens",
                                           budget_min=1024, budget_required=True, cap_required=True), None)
    assert not no_limit.applied and "output limit is unknown" in no_limit.adjusted


def test_tool_calls_get_no_cap_that_could_cut_them():
    o3 = thinking_knob(row("o3"), 300, cap=False)
    assert o3.fields == {"reasoning_effort": "low"} and o3.max_tokens is None
    assert o3.adjusted == "no output cap: the request may emit a tool call"
    claude = thinking_knob(row("claude-sonnet-4-5"), 2000, cap=False, limit=20000)
    assert claude.fields == {"thinking": {"type": "enabled", "budget_tokens": 2000}, "max_tokens": 20000}
    assert "output cap raised to the output limit" in claude.adjusted


# -- the record --------------------------------------------------------------------------------------


def test_record_keys_and_budget_via():
    assert RECORD_KEYS[-2:] == ("budget_via", "thinking")
    budget = Budget(tokens=300, raw=300, source="fixed")
    knob = thinking_knob(row("o3"), budget, model="o3")
    record = BudgetRecord(budget=budget, thinking=knob).to_dict()
    assert list(record) == list(RECORD_KEYS)
    assert record["budget_via"] == "thinking" and record["thinking"] == knob.to_dict()
    assert set(knob.to_dict()) == {f for f in ThinkingKnob.__dataclass_fields__}
    assert BudgetRecord(budget=budget).to_dict()["budget_via"] == "prompt"
    assert BudgetRecord(budget=None).to_dict()["budget_via"] is None
    assert BudgetRecord(budget=None, thinking=thinking_knob(row("o3"), None)).budget_via == "thinking"


def test_rows_round_trip_to_dict():
    d = row("o3").to_dict()
    assert d["engine"] == "openai" and d["levels"] == ["low", "medium", "high"] and re.search(d["pattern"], "o3")


def test_the_docs_table_lists_every_row():
    from pathlib import Path

    lines = (Path(__file__).parents[2] / "docs" / "thinking_models.md").read_text(encoding="utf-8").splitlines()
    for r in THINKING_MODELS:
        [line] = [line for line in lines if line.startswith(f"| {r.engine} | {r.family} |")]
        knob = r.budget_field or r.level_field
        assert knob is None or f"`{knob}`" in line, r.family
        assert f"`{r.cap_field}`" in line and str(r.max_output_tokens or "–") in line, r.family
        assert all(lv in line for lv in r.levels), r.family
