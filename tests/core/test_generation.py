"""Usage arithmetic, message validation and FunctionGenerator (pure logic)."""

from __future__ import annotations

import pytest

from tale_integrations.core.errors import TaleError
from tale_integrations.core.generation import (
    BaseGenerator,
    FunctionGenerator,
    Generation,
    Generator,
    Sampling,
    Usage,
    validate_messages,
)


def test_usage_adds_and_totals():
    a = Usage(input_tokens=10, output_tokens=5, cached_input_tokens=2, reasoning_tokens=1, counter="hf:x")
    b = Usage(input_tokens=1, output_tokens=2, counter="hf:x")
    total = a + b
    assert (total.input_tokens, total.output_tokens, total.cached_input_tokens, total.reasoning_tokens) == (11, 7, 2, 1)
    assert total.total_tokens == 18
    assert total.counter == "hf:x"
    assert (a + Usage(counter="reported")).counter == "mixed"
    assert a.to_dict()["total_tokens"] == 15


@pytest.mark.parametrize("field", ["input_tokens", "output_tokens", "cached_input_tokens", "reasoning_tokens"])
@pytest.mark.parametrize("value", [-1, 1.5, True, "3"])
def test_usage_rejects_bad_counts(field, value):
    with pytest.raises(ValueError, match=field):
        Usage(**{field: value})


def test_validate_messages_copies_to_plain_dicts():
    class Msg(dict):
        pass

    out = validate_messages([[Msg(role="user", content="hi")]])
    assert out == [[{"role": "user", "content": "hi"}]]
    assert type(out[0][0]) is dict


@pytest.mark.parametrize(("prompts", "error", "match"), [
    ("text", TypeError, "list of conversations"),
    (["text"], TypeError, r"prompts\[0\]"),
    ([[]], ValueError, "empty conversation"),
    ([[{"role": "user"}]], TypeError, "content"),
    ([[{"role": "tool", "content": "x"}]], ValueError, "role"),
    ([[("user", "x")]], TypeError, "mapping"),
])
def test_validate_messages_errors(prompts, error, match):
    with pytest.raises(error, match=match):
        validate_messages(prompts)


def test_function_generator_passes_settings_and_wraps_strings():
    seen = []

    def fn(messages, *, max_tokens, stop, temperature):
        seen.append((messages[-1]["content"], max_tokens, stop, temperature))
        return messages[-1]["content"].upper()

    gen = FunctionGenerator(fn, model_name="upper")
    assert isinstance(gen, Generator)
    out = gen.generate([[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]], max_tokens=3,
                       stop=["x"], temperature=0.5)
    assert [g.text for g in out] == ["A", "B"]
    assert out[0].model == "upper" and out[0].finish_reason == "stop" and out[0].usage.counter == "none"
    assert seen == [("a", 3, ["x"], 0.5), ("b", 3, ["x"], 0.5)]


async def test_function_generator_async_uses_the_async_twin():
    async def afn(messages, **_):
        return Generation(text="async", usage=Usage(output_tokens=1), finish_reason="length", model="m")

    gen = FunctionGenerator(lambda m, **_: "sync", afn=afn)
    assert [g.text for g in await gen.agenerate([[{"role": "user", "content": "q"}]])] == ["async"]
    plain = FunctionGenerator(lambda m, **_: "sync")
    assert [g.text for g in await plain.agenerate([[{"role": "user", "content": "q"}]])] == ["sync"]


def test_function_generator_rejects_bad_returns_and_non_callables():
    with pytest.raises(TypeError, match="Generation or str"):
        FunctionGenerator(lambda m, **_: 3).generate([[{"role": "user", "content": "q"}]])
    with pytest.raises(TypeError, match="callable"):
        FunctionGenerator("not a function")


# -- Sampling and BaseGenerator -------------------------------------------------------------------


def test_sampling_keeps_checked_settings_and_gives_generate_keywords():
    sampling = Sampling(max_tokens=5, stop=["\n\n", "Q:"], temperature=0)
    assert sampling.stop == ("\n\n", "Q:")
    assert sampling.to_dict() == {"max_tokens": 5, "stop": ["\n\n", "Q:"], "temperature": 0}
    assert Sampling().to_dict() == {"max_tokens": None, "stop": None, "temperature": None}


@pytest.mark.parametrize(("settings", "error", "match"), [
    ({"max_tokens": 0}, ValueError, "max_tokens must be a positive int or None"),
    ({"max_tokens": True}, ValueError, "max_tokens"),
    ({"temperature": 2.5}, ValueError, "temperature must be a number from 0 to 2"),
    ({"temperature": float("nan")}, ValueError, "temperature"),
    ({"stop": "Q:"}, TypeError, r"one stop string: \[text\]"),
    ({"stop": ["Q:", None]}, TypeError, "stop must be a list of strings"),
    ({"stop": [""]}, ValueError, "non-empty"),
])
def test_sampling_refuses_bad_settings(settings, error, match):
    with pytest.raises(error, match=match):
        Sampling(**settings)


class Echo(BaseGenerator):
    """The smallest subclass: records what reached `_generate`."""

    model_name = "echo"

    def __init__(self, *, extra: int = 0) -> None:
        self.seen: list[tuple[list, Sampling]] = []
        self.extra = extra

    def _generate(self, conversations, sampling):
        self.seen.append((conversations, sampling))
        texts = [c[-1]["content"] for c in conversations] + ["extra"] * self.extra
        return [Generation(text=t, usage=Usage(counter="none"), finish_reason="stop", model="echo") for t in texts]


async def test_base_generator_checks_once_then_hands_over_plain_conversations():
    gen = Echo()
    assert isinstance(gen, Generator)
    out = gen.generate([[{"role": "user", "content": "a"}]], max_tokens=3, stop=["x"])
    assert [g.text for g in out] == ["a"]
    assert gen.seen == [([[{"role": "user", "content": "a"}]], Sampling(max_tokens=3, stop=("x",)))]
    assert [g.text for g in await gen.agenerate([[{"role": "user", "content": "b"}]])] == ["b"]  # via a thread
    assert gen.generate([]) == [] and await gen.agenerate([]) == [] and len(gen.seen) == 2  # no model call
    with pytest.raises(ValueError, match="temperature"):
        gen.generate([[{"role": "user", "content": "a"}]], temperature=-1)
    with pytest.raises(TypeError, match="stop"):
        await gen.agenerate([], stop="x")  # settings are checked even for an empty batch
    assert len(gen.seen) == 2


def test_base_generator_refuses_a_wrong_number_of_generations():
    with pytest.raises(TaleError, match="returned 2 generations for 1 conversations"):
        Echo(extra=1).generate([[{"role": "user", "content": "a"}]])


def test_base_generator_is_abstract():
    class Incomplete(BaseGenerator):
        model_name = "x"

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()
