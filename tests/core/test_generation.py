"""Usage arithmetic, message validation and FunctionGenerator (pure logic)."""

from __future__ import annotations

import pytest

from tale_integrations.core.generation import FunctionGenerator, Generation, Generator, Usage, validate_messages


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
