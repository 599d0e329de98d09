"""TalePipeline: modes, budgets, fallbacks, batching, async, on real tiny models and pure-logic fakes."""

from __future__ import annotations

import json

import pytest

from tale_integrations import (
    BudgetPolicy,
    EstimatorError,
    FixedEstimator,
    FunctionEstimator,
    FunctionGenerator,
    Generation,
    Mode,
    TalePipeline,
    Usage,
)


class Recorder:
    """A Generator wrapper that records every batched call (prompts and settings)."""

    def __init__(self, inner):
        self.inner = inner
        self.model_name = inner.model_name
        self.calls: list[tuple[list, dict]] = []
        if hasattr(inner, "context_window"):
            self.context_window = inner.context_window

    def generate(self, prompts, **settings):
        self.calls.append((list(prompts), settings))
        return self.inner.generate(prompts, **settings)

    async def agenerate(self, prompts, **settings):
        self.calls.append((list(prompts), settings))
        return await self.inner.agenerate(prompts, **settings)


def echo_generator(estimate_reply="Budget: [[40]]", answer="so [[7]]", *, in_tokens=10, out_tokens=5):
    """Pure-logic fake: replies to the estimation prompt and to answer prompts differently."""

    def fn(messages, **_):
        text = estimate_reply if "estimate the minimum number of tokens" in messages[-1]["content"] else answer
        return Generation(text=text, usage=Usage(input_tokens=in_tokens, output_tokens=out_tokens),
                          finish_reason="stop", model="echo")

    return Recorder(FunctionGenerator(fn, model_name="echo"))


def last_user(result) -> str:
    return result.messages[-1]["content"]


# -- TALE-EP on a real tiny model ------------------------------------------------------------------


def test_tale_ep_end_to_end_on_a_real_model(scripted_generator):
    gen = scripted_generator("[[40]]")
    result = TalePipeline(gen, max_tokens=30).invoke("What is 3 + 4?")
    assert result.mode is Mode.TALE_EP
    assert result.budget.raw == 40
    assert result.budget.tokens == 30  # lowered to the answer's hard cap
    assert result.budget.adjusted == "lowered to cap"
    assert "use less than 30 tokens:" in last_user(result)
    assert result.estimator == "zero-shot:scripted"
    assert result.estimator_reply.startswith("[[40]]")
    # exact usage of both calls, from the model's own tokenizer
    assert result.estimator_usage.output_tokens == 64  # the estimator's own cap
    assert result.usage.input_tokens == len(gen.encode_chat(result.messages))
    assert result.usage.output_tokens == 30
    assert result.finish_reason == "length"
    assert result.total_usage.total_tokens == result.usage.total_tokens + result.estimator_usage.total_tokens
    assert result.answer == "40"


def test_batch_makes_one_estimator_call_and_one_answer_call(scripted_generator):
    gen = Recorder(scripted_generator("[[40]]"))
    results = TalePipeline(gen, max_tokens=8).batch(["q one", "q two", "q three"])
    assert len(gen.calls) == 2
    assert [len(prompts) for prompts, _ in gen.calls] == [3, 3]
    assert gen.calls[0][1]["max_tokens"] == 64
    assert gen.calls[1][1]["max_tokens"] == 8
    assert [r.question for r in results] == ["q one", "q two", "q three"]
    assert all(r.budget.raw == 40 for r in results)


async def test_async_twins_match_sync(tiny_generator):
    tale = TalePipeline(tiny_generator, max_tokens=6, budget=25)
    sync = tale.batch(["alpha", "beta"])
    asynced = await tale.abatch(["alpha", "beta"])
    single = await tale.ainvoke("alpha")
    assert [r.to_dict() for r in asynced] == [r.to_dict() for r in sync]
    assert single.to_dict() == sync[0].to_dict()


# -- modes ----------------------------------------------------------------------------------------


def test_vanilla_mode_sends_the_plain_trigger_and_no_estimate():
    gen = echo_generator()
    result = TalePipeline(gen, mode="vanilla").invoke("How many?")
    assert last_user(result).endswith("Let's think step by step:\n")
    assert result.budget is None and result.estimator is None and result.estimator_usage is None
    assert len(gen.calls) == 1
    assert result.total_usage == result.usage


def test_direct_mode_sends_the_direct_prompt():
    result = TalePipeline(echo_generator(), mode="direct").invoke("How many?")
    assert last_user(result).startswith("Please answer the following question and give the answer directly")
    assert last_user(result).endswith("\nQ: How many?")
    assert result.answer == "7"


def test_direct_mode_with_multiple_choice_sends_the_options():
    sent = []

    def answer(messages, **_):
        sent.append(messages)
        return "[[B]]"

    result = TalePipeline(FunctionGenerator(answer), mode="direct", format="multiple_choice").invoke(
        "Which is even?", options=["3", "4"])
    assert sent[0][-1]["content"].endswith("[[A]].\nWhich is even?\nA. 3\nB. 4\n\n")
    assert result.answer == "B"


def test_fixed_mode_uses_the_caller_budget_even_below_the_floor():
    result = TalePipeline(echo_generator(), budget=10).invoke("How many?")
    assert result.mode is Mode.FIXED
    assert result.budget.tokens == 10
    assert "use less than 10 tokens:" in last_user(result)


def test_per_call_budget_skips_estimation():
    gen = echo_generator()
    result = TalePipeline(gen).invoke("How many?", budget=33)
    assert len(gen.calls) == 1
    assert result.budget.tokens == 33 and result.budget.source == "caller"
    assert result.estimator is None


def test_mixed_batch_estimates_only_questions_without_a_budget():
    gen = echo_generator()
    results = TalePipeline(gen).batch(["a", {"question": "b", "budget": 50}, "c"])
    assert len(gen.calls[0][0]) == 2  # the estimator saw two questions
    assert [r.budget.tokens for r in results] == [40, 50, 40]


def test_multiple_choice_format_extracts_a_letter():
    gen = echo_generator(answer="The answer is [[C]]")
    tale = TalePipeline(gen, format="multiple_choice", budget=60)
    result = tale.invoke("Which?", options=["1", "2", "3", "4"])
    assert "A. 1\nB. 2\nC. 3\nD. 4\n" in last_user(result)
    assert result.answer == "C"


def test_chat_format_has_no_answer_format_and_no_extraction():
    result = TalePipeline(echo_generator(), format="chat", budget=60).invoke("Tell me.")
    assert last_user(result) == "Tell me.\nLet's think step by step and use less than 60 tokens:\n"
    assert result.answer is None


def test_one_conversation_style_continues_the_estimation_chat():
    gen = echo_generator(estimate_reply="Budget: [[45]]")
    result = TalePipeline(gen, conversation="one_conversation").invoke("How many?")
    roles = [m["role"] for m in result.messages]
    assert roles == ["system", "user", "assistant", "user"]
    assert result.messages[2]["content"] == "Budget: [[45]]"
    assert 'Question: "How many?"' in result.messages[1]["content"]
    assert "How many?" not in result.messages[3]["content"]
    assert result.messages[3]["content"].endswith("use less than 45 tokens:\n")


# -- budgets: floor, cap, fallbacks ------------------------------------------------------------------


@pytest.mark.parametrize(("reply", "tokens", "adjusted"), [
    ("Budget: [[5]]", 20, "raised to floor"),
    ("Budget: [[0]]", 20, "raised to floor"),
    ("[[99999999999999999999]]", 1024, "lowered to cap"),
    ("Budget: [[300]]", 300, None),
])
def test_estimates_are_clamped(reply, tokens, adjusted):
    result = TalePipeline(echo_generator(estimate_reply=reply)).invoke("q")
    assert (result.budget.tokens, result.budget.adjusted) == (tokens, adjusted)
    assert f"use less than {tokens} tokens:" in last_user(result)


def test_scale_alpha_multiplies_the_estimate():
    tale = TalePipeline(echo_generator(estimate_reply="[[40]]"), policy=BudgetPolicy(scale=2.0))
    assert tale.invoke("q").budget.tokens == 80


@pytest.mark.parametrize("reply", ["no idea", "[[-1]]", "Budget: [[]]", ""])
def test_parse_failure_falls_back_and_never_renders_a_bad_budget(reply):
    result = TalePipeline(echo_generator(estimate_reply=reply)).invoke("q")
    assert result.budget.tokens == 128
    assert result.budget.source == "fallback"
    assert result.budget.adjusted == "parse failed"
    assert "use less than 128 tokens:" in last_user(result)
    assert "-1" not in last_user(result)


def test_parse_failure_can_fall_back_to_vanilla():
    tale = TalePipeline(echo_generator(estimate_reply="??"), policy=BudgetPolicy(on_parse_failure="vanilla"))
    result = tale.invoke("q")
    assert result.budget.tokens is None
    assert last_user(result).endswith("Let's think step by step:\n")


def test_budget_never_exceeds_the_model_context(scripted_generator, tiny_tokenizer):
    from tiny_models import build_tiny_model, script_model

    from tale_integrations.backends.hf import HFGenerator

    small = script_model(build_tiny_model(tiny_tokenizer, max_positions=200), tiny_tokenizer.convert_tokens_to_ids("[[40]]"))
    gen = HFGenerator.from_model(small, tiny_tokenizer)
    result = TalePipeline(gen, max_tokens=None, estimator=FixedEstimator(5000), policy=BudgetPolicy(max_budget=8000)).invoke("q")
    assert result.budget.tokens == 200
    assert result.budget.adjusted == "lowered to cap"


def raising_estimator():
    def boom(question):
        raise ConnectionError("estimator service down")

    return FunctionEstimator(boom, name="remote")


def test_estimator_failure_raises_a_clear_error():
    with pytest.raises(EstimatorError, match="'remote' failed.*on_estimator_error='fallback'"):
        TalePipeline(echo_generator(), estimator=raising_estimator()).invoke("q")


async def test_estimator_failure_can_fall_back():
    tale = TalePipeline(echo_generator(), estimator=raising_estimator(), on_estimator_error="fallback")
    for result in (tale.invoke("q"), await tale.ainvoke("q")):
        assert result.budget.tokens == 128
        assert result.budget.adjusted == "estimator failed"
        assert result.estimator == "remote"


def test_estimator_returning_wrong_count_is_an_error():
    class Broken:
        name = "broken"

        def estimate(self, questions):
            return []

        async def aestimate(self, questions):
            return []

    with pytest.raises(EstimatorError, match="0 estimates for 1 questions"):
        TalePipeline(echo_generator(), estimator=Broken()).invoke("q")


# -- results and bad input ------------------------------------------------------------------------


def test_result_to_dict_is_json_serialisable():
    result = TalePipeline(echo_generator()).invoke("q")
    data = json.loads(json.dumps(result.to_dict()))
    assert (data["budget"], data["budget_raw"], data["budget_adjusted"]) == (40, 40, None)
    assert data["budget_source"] == data["estimator"] and data["estimator_reply"] and data["estimator_error"] is None
    assert data["usage"] == {"input_tokens": 10, "output_tokens": 5, "cached_input_tokens": 0,
                             "reasoning_tokens": 0, "counter": "reported", "total_tokens": 15}
    assert data["total_usage"]["total_tokens"] == 30
    assert data["mode"] == "tale-ep"


@pytest.mark.parametrize(("question", "error", "match"), [
    ("", ValueError, "empty"),
    ("   ", ValueError, "empty"),
    (None, TypeError, "question"),
    (42, TypeError, "question"),
    ({"options": ["a"]}, ValueError, "'question' key"),
    ({"question": "q", "budget": 0}, ValueError, "budget"),
    ({"question": "q", "budget": -1}, ValueError, "budget"),
])
def test_bad_questions(question, error, match):
    with pytest.raises(error, match=match):
        TalePipeline(echo_generator()).invoke(question)


def test_batch_names_the_bad_item_and_rejects_a_bare_string():
    tale = TalePipeline(echo_generator())
    with pytest.raises(ValueError, match=r"questions\[1\]"):
        tale.batch(["ok", ""])
    with pytest.raises(TypeError, match="invoke"):
        tale.batch("one question")
    assert tale.batch([]) == []


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"mode": "fixed"}, "needs budget"),
    ({"mode": "vanilla", "budget": 50}, "only used with mode='fixed'"),
    ({"mode": "direct", "estimator": FixedEstimator(9)}, "only used with mode='tale-ep'"),
    ({"mode": "vanilla", "conversation": "one_conversation"}, "needs mode='tale-ep'"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"on_estimator_error": "ignore"}, "on_estimator_error"),
    ({"budget": -5}, "positive int"),
    ({"mode": "sometimes"}, "sometimes"),
])
def test_bad_configuration(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TalePipeline(echo_generator(), **kwargs)


def test_direct_mode_refuses_a_per_call_budget():
    with pytest.raises(ValueError, match="direct"):
        TalePipeline(echo_generator(), mode="direct").invoke("q", budget=30)


def test_multiple_choice_without_options_is_refused():
    with pytest.raises(ValueError, match="options"):
        TalePipeline(echo_generator(), format="multiple_choice", budget=40).invoke("q")


def test_not_a_generator_is_refused():
    with pytest.raises(TypeError, match="Generator"):
        TalePipeline(object())


# -- the embedded model ---------------------------------------------------------------------------


@pytest.mark.slow
def test_embedded_budget_reaches_the_prompt_and_usage_is_exact(embedded_generator):
    tale = TalePipeline(embedded_generator, max_tokens=48)
    result = tale.invoke("Tom has 3 apples and buys 4 more. How many apples does he have now?")
    tokens = result.budget.tokens
    assert isinstance(tokens, int) and 20 <= tokens <= 48
    ids = embedded_generator.encode_chat(result.messages)
    seen = embedded_generator.tokenizer.decode(ids)
    assert f"use less than {tokens} tokens:" in seen  # the model really saw the budget
    assert result.usage.input_tokens == len(ids)
    estimation = tale.estimator.messages(result.question)
    assert result.estimator_usage.input_tokens == len(embedded_generator.encode_chat(estimation))
    assert 1 <= result.usage.output_tokens <= 48
    assert 1 <= result.estimator_usage.output_tokens <= 64
    # output counts match an independent, unbatched transformers generation of the same prompts
    import torch

    model, tok = embedded_generator.model, embedded_generator.tokenizer
    for messages, usage, cap in ((result.messages, result.usage, 48), (estimation, result.estimator_usage, 64)):
        enc = tok.apply_chat_template(list(messages), add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=cap, do_sample=False, pad_token_id=tok.pad_token_id)
        new = out[0, enc["input_ids"].shape[1]:].tolist()
        assert usage.output_tokens == len(new)
