"""Tests for tale_integrations.core.estimators, with FunctionGenerator as the model."""

from __future__ import annotations

import threading

import pytest

from tale_integrations.core.estimators import (
    BudgetEstimator,
    Estimate,
    EstimatorError,
    FixedEstimator,
    FunctionEstimator,
    ZeroShotEstimator,
)
from tale_integrations.core.generation import FunctionGenerator, Generation, Usage

SCRIPTS_USER = (
    "Task: Analyze the given question and estimate the minimum number of tokens required to generate a "
    "complete and accurate response. Please Give the response by strictly following this format: "
    "[[budget]],for example: Budget: [[12]].\n"
    "\n"
    "Below is the question:\n"
    "\n"
    'Question: "What is 6 times 7?"\n'
)
FIGURE_USER = (
    "Task: Analyze the given question and estimate the minimum number of tokens required to generate a "
    "complete and accurate response. Please Give the response by strictly following this format: "
    "[[budget]], for example, Budget: [[12]].\n"
    "\n"
    "Below is the question:\n"
    "\n"
    'Question: "What is 6 times 7?"\n'
)


class Recorder:
    """A generator function that records what it received and replies from a table."""

    def __init__(self, replies=None, default="Budget: [[40]]"):
        self.replies = replies or {}
        self.default = default
        self.calls = []
        self._lock = threading.Lock()

    def __call__(self, messages, *, max_tokens, stop, temperature):
        with self._lock:
            self.calls.append(
                {"messages": messages, "max_tokens": max_tokens, "stop": stop, "temperature": temperature}
            )
        question = messages[-1]["content"].rsplit('Question: "', 1)[-1].removesuffix('"\n')
        return self.replies.get(question, self.default)


class CountingGenerator(FunctionGenerator):
    """A FunctionGenerator that counts batched generate / agenerate calls."""

    def __init__(self, fn, **kwargs):
        super().__init__(fn, **kwargs)
        self.generate_calls = 0
        self.agenerate_calls = 0

    def generate(self, prompts, **kwargs):
        self.generate_calls += 1
        return super().generate(prompts, **kwargs)

    async def agenerate(self, prompts, **kwargs):
        self.agenerate_calls += 1
        return await super().agenerate(prompts, **kwargs)


class WrongCountGenerator(FunctionGenerator):
    """Returns one generation too many (or too few)."""

    def __init__(self, fn, delta, **kwargs):
        super().__init__(fn, **kwargs)
        self.delta = delta

    def _fix(self, gens):
        return gens[: len(gens) + self.delta] if self.delta < 0 else gens + gens[:1] * self.delta

    def generate(self, prompts, **kwargs):
        return self._fix(super().generate(prompts, **kwargs))

    async def agenerate(self, prompts, **kwargs):
        return self._fix(await super().agenerate(prompts, **kwargs))


# --- ZeroShotEstimator ----------------------------------------------------------------------


def test_zero_shot_sends_exact_estimation_chat_and_defaults():
    rec = Recorder()
    est = ZeroShotEstimator(FunctionGenerator(rec, model_name="m"))
    [e] = est.estimate(["What is 6 times 7?"])
    assert len(rec.calls) == 1
    call = rec.calls[0]
    assert call["messages"] == [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": SCRIPTS_USER},
    ]
    assert call["max_tokens"] == 64
    assert call["temperature"] is None
    assert call["stop"] is None
    assert e.raw == 40
    assert est.name == "zero-shot:m"


def test_zero_shot_figure_prompt_and_settings():
    rec = Recorder()
    est = ZeroShotEstimator(FunctionGenerator(rec), prompt="figure", max_tokens=16, temperature=0.1)
    est.estimate(["What is 6 times 7?"])
    assert rec.calls[0]["messages"][1]["content"] == FIGURE_USER
    assert rec.calls[0]["max_tokens"] == 16
    assert rec.calls[0]["temperature"] == 0.1
    assert est.messages("What is 6 times 7?")[1]["content"] == FIGURE_USER


def test_zero_shot_keeps_reply_and_usage():
    usage = Usage(input_tokens=91, output_tokens=7, counter="reported")

    def fn(messages, **_):
        return Generation(text="Budget: [[40]]", usage=usage, finish_reason="stop", model="m")

    [e] = ZeroShotEstimator(FunctionGenerator(fn)).estimate(["What is 6 times 7?"])
    assert e == Estimate(raw=40, reply="Budget: [[40]]", usage=usage, error=None)
    assert e.usage.input_tokens == 91 and e.usage.output_tokens == 7


def test_zero_shot_unparseable_reply():
    [e] = ZeroShotEstimator(FunctionGenerator(lambda m, **_: "I'm not sure, maybe a few.")).estimate(["q?"])
    assert e.raw is None
    assert e.reply == "I'm not sure, maybe a few."
    assert isinstance(e.error, str) and e.error


def test_zero_shot_negative_and_lenient():
    gen = FunctionGenerator(lambda m, **_: "Budget: 40")
    assert ZeroShotEstimator(gen).estimate(["q?"])[0].raw == 40
    strict = ZeroShotEstimator(gen, lenient=False).estimate(["q?"])[0]
    assert strict.raw is None and strict.error
    [neg] = ZeroShotEstimator(FunctionGenerator(lambda m, **_: "[[-5]]")).estimate(["q?"])
    assert neg.raw is None


QUESTIONS = ["alpha?", "beta?", "gamma?", "delta?"]
REPLIES = {"alpha?": "[[10]]", "beta?": "Budget: [[200]]", "gamma?": "no idea", "delta?": "[[0]]"}


def test_zero_shot_batched_one_call_in_order():
    rec = Recorder(REPLIES)
    gen = CountingGenerator(rec)
    estimates = ZeroShotEstimator(gen).estimate(QUESTIONS)
    assert gen.generate_calls == 1
    assert len(rec.calls) == 4
    assert [e.raw for e in estimates] == [10, 200, None, 0]
    assert [e.reply for e in estimates] == ["[[10]]", "Budget: [[200]]", "no idea", "[[0]]"]
    assert [c["messages"][1]["content"].endswith(f'"{q}"\n') for c, q in zip(rec.calls, QUESTIONS)] == [True] * 4


async def test_zero_shot_async_same_as_sync():
    rec = Recorder(REPLIES)
    gen = CountingGenerator(rec)
    est = ZeroShotEstimator(gen)
    async_estimates = await est.aestimate(QUESTIONS)
    assert gen.agenerate_calls == 1
    assert gen.generate_calls == 0
    assert async_estimates == est.estimate(QUESTIONS)
    assert [e.raw for e in async_estimates] == [10, 200, None, 0]
    assert all(c["max_tokens"] == 64 for c in rec.calls)


async def test_zero_shot_async_with_afn():
    async def afn(messages, **_):
        return "[[33]]"

    gen = FunctionGenerator(lambda m, **_: "[[1]]", afn=afn)
    assert [e.raw for e in await ZeroShotEstimator(gen).aestimate(["a?", "b?"])] == [33, 33]


def test_zero_shot_empty_batch():
    gen = CountingGenerator(Recorder())
    assert ZeroShotEstimator(gen).estimate([]) == []


@pytest.mark.parametrize("delta", [1, -1])
def test_zero_shot_wrong_number_of_generations(delta):
    est = ZeroShotEstimator(WrongCountGenerator(Recorder(), delta))
    with pytest.raises(EstimatorError):
        est.estimate(["a?", "b?"])


@pytest.mark.parametrize("delta", [1, -1])
async def test_zero_shot_async_wrong_number_of_generations(delta):
    est = ZeroShotEstimator(WrongCountGenerator(Recorder(), delta))
    with pytest.raises(EstimatorError):
        await est.aestimate(["a?", "b?"])


def test_estimator_error_is_runtime_error():
    assert issubclass(EstimatorError, RuntimeError)


class SyncOnly:
    model_name = "x"

    def generate(self, prompts, **kwargs):
        return []


@pytest.mark.parametrize("bad", [None, "gpt-4o", lambda m: "[[4]]", SyncOnly()])
def test_zero_shot_rejects_non_generator(bad):
    with pytest.raises(TypeError):
        ZeroShotEstimator(bad)


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "64"])
def test_zero_shot_rejects_bad_max_tokens(bad):
    with pytest.raises(ValueError):
        ZeroShotEstimator(FunctionGenerator(Recorder()), max_tokens=bad)


def test_zero_shot_rejects_unknown_prompt_variant():
    with pytest.raises(ValueError):
        ZeroShotEstimator(FunctionGenerator(Recorder()), prompt="paper")


def test_zero_shot_empty_question_raises_before_calling():
    rec = Recorder()
    with pytest.raises(ValueError):
        ZeroShotEstimator(FunctionGenerator(rec)).estimate(["ok?", "   "])
    assert rec.calls == []


# --- FixedEstimator -------------------------------------------------------------------------


def test_fixed_estimator():
    est = FixedEstimator(50)
    assert est.name == "fixed:50"
    estimates = est.estimate(["a", "b", "c"])
    assert [e.raw for e in estimates] == [50, 50, 50]
    assert all(e.error is None and e.reply == "" for e in estimates)
    assert all(e.usage.total_tokens == 0 for e in estimates)
    assert est.estimate([]) == []


async def test_fixed_estimator_async():
    assert [e.raw for e in await FixedEstimator(7).aestimate(["a", "b"])] == [7, 7]


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, None, "50"])
def test_fixed_estimator_rejects_bad_budget(bad):
    with pytest.raises(ValueError):
        FixedEstimator(bad)


# --- FunctionEstimator ----------------------------------------------------------------------


def test_function_estimator_values():
    table = {"a": 40, "b": None, "c": -3, "d": 0}
    est = FunctionEstimator(table.__getitem__, name="table")
    a, b, c, d = est.estimate(["a", "b", "c", "d"])
    assert a == Estimate(raw=40)
    assert b.raw is None and b.error and "table" in b.error
    assert c.raw is None and c.error and "-3" in c.error
    assert d.raw == 0 and d.error is None
    assert est.name == "table"
    assert FunctionEstimator(len).name == "function"


@pytest.mark.parametrize("value", ["40", 40.0, True, [40]])
def test_function_estimator_bad_return_type(value):
    est = FunctionEstimator(lambda q: value)
    with pytest.raises(EstimatorError):
        est.estimate(["q"])


async def test_function_estimator_async_twin():
    seen = []

    def fn(q):
        seen.append(q)
        return {"x": 12, "y": None, "z": -1}[q]

    est = FunctionEstimator(fn)
    estimates = await est.aestimate(["x", "y", "z"])
    assert sorted(seen) == ["x", "y", "z"]
    assert [e.raw for e in estimates] == [12, None, None]
    assert estimates[1].error and estimates[2].error
    assert estimates == est.estimate(["x", "y", "z"])


async def test_function_estimator_async_bad_return():
    with pytest.raises(EstimatorError):
        await FunctionEstimator(lambda q: "forty").aestimate(["q"])


def test_function_estimator_rejects_non_callable():
    with pytest.raises(TypeError):
        FunctionEstimator(40)


# --- Estimate and the protocol --------------------------------------------------------------


@pytest.mark.parametrize("raw", [-1, -100, True, 1.5, "40"])
def test_estimate_rejects_bad_raw(raw):
    with pytest.raises(ValueError):
        Estimate(raw=raw)


def test_estimate_defaults():
    e = Estimate(raw=0)
    assert e.reply == "" and e.error is None
    assert e.usage == Usage(counter="none")
    assert Estimate(raw=None).raw is None


def test_all_estimators_satisfy_protocol():
    for est in (ZeroShotEstimator(FunctionGenerator(Recorder())), FixedEstimator(50), FunctionEstimator(len)):
        assert isinstance(est, BudgetEstimator)
    assert not isinstance(object(), BudgetEstimator)


@pytest.mark.parametrize("make", [lambda: FixedEstimator(30), lambda: FunctionEstimator(len)])
def test_a_bare_string_is_not_a_list_of_questions(make):
    with pytest.raises(TypeError, match="list of strings"):
        make().estimate("What is 2+2?")
