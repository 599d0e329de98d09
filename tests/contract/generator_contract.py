"""The `Generator` contract: one bar every backend meets (the protocol in core/generation.py).

Subclass `GeneratorContract` as ``class TestXxxGenerator(GeneratorContract)`` in a ``test_*.py``
module and supply a ``generator`` fixture returning the generator under test; pytest then runs
every check below on it. The generator must decode deterministically (greedy, or a scripted
function) and, unless a cap or stop string ends it, write at least `LONG` tokens of varied text for
each of `PROMPTS`: that is what makes order, caps and stop strings checkable exactly.

A backend that genuinely cannot do something says so in a class attribute holding the reason
(``cannot_count_tokens``, ``cannot_cap_tokens``); the check then asserts the weaker property that
still holds, never a skip. The ``count_prompt`` fixture may return a function giving the exact
prompt tokens the backend must report for a conversation (by default the counts are only checked
for consistency).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from tale_integrations.core.generation import Generation, Generator

#: Three conversations of growing size (one with a system message), so each report differs.
PROMPTS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 3?"}],
    [{"role": "user", "content": "a much longer question that needs left padding in the batch"}],
]
#: A cap the generator always reaches, and a longer one used as "uncapped".
CAP, LONG = 5, 16
#: A stop string no reply contains, sent alongside the real one.
NEVER = "@@never@@"

BAD_CALLS = [
    pytest.param({"prompts": "What is 2 + 3?"}, "prompts", id="prompts-a-str"),
    pytest.param({"prompts": ["What is 2 + 3?"]}, r"prompts\[0\]", id="conversation-a-str"),
    pytest.param({"prompts": [[]]}, r"prompts\[0\]", id="empty-conversation"),
    pytest.param({"prompts": [[{"role": "robot", "content": "x"}]]}, "role", id="unknown-role"),
    pytest.param({"prompts": [[{"role": "user", "content": 3}]]}, "content", id="content-not-str"),
    *(pytest.param({"max_tokens": v}, "max_tokens", id=f"max_tokens={v!r}") for v in (0, -2, True, "3", 1.5)),
    *(pytest.param({"temperature": v}, "temperature", id=f"temperature={v!r}") for v in (-1, 2.5, "hot")),
    *(pytest.param({"stop": v}, "stop", id=f"stop={v!r}") for v in ("x", [1], [""])),
]


def signature(generation: Generation) -> tuple[Any, ...]:
    """What tells replies apart: text, token counts and finish reason."""
    return generation.text, generation.usage.input_tokens, generation.usage.output_tokens, generation.finish_reason


def stop_inside(text: str) -> tuple[str, str]:
    """A two-character stop string first found near the middle of ``text``, and the text before it."""
    for i in sorted(range(1, len(text) - 2), key=lambda i: abs(i - len(text) // 2)):
        stop = text[i : i + 2]
        if text.find(stop) == i and stop.isascii() and stop.isprintable() and stop.strip():
            return stop, text[:i]
    raise AssertionError(f"the reply {text!r} holds no usable stop string: the fixture must write varied text")


def call(generator: Any, mode: str, prompts: Any, **settings: Any) -> list[Generation]:
    """``generate`` or (in a fresh event loop) ``agenerate``."""
    if mode == "generate":
        return generator.generate(prompts, **settings)
    return asyncio.run(generator.agenerate(prompts, **settings))


class GeneratorContract:
    """The checks every `Generator` passes. Subclasses supply the ``generator`` fixture."""

    #: Why the backend reports no token counts (None: it counts). The weaker property then checked:
    #: usage is all zeros with ``counter="none"``, never invented numbers.
    cannot_count_tokens: str | None = None
    #: Why a per-call ``max_tokens`` is not enforced (None: enforced). The weaker property then
    #: checked: the setting is accepted and one reply per prompt still comes back.
    cannot_cap_tokens: str | None = None

    @pytest.fixture()
    def count_prompt(self) -> Callable[[list[dict[str, str]]], int] | None:
        """The exact prompt tokens the backend must report for a conversation, or None (unknown)."""
        return None

    def test_flags_give_their_reasons(self):
        for flag in (self.cannot_count_tokens, self.cannot_cap_tokens):
            assert flag is None or (isinstance(flag, str) and flag.strip()), "a missing ability needs its reason"

    def test_is_a_generator(self, generator):
        assert isinstance(generator, Generator)
        assert isinstance(generator.model_name, str) and generator.model_name

    async def test_an_empty_batch_gives_no_generations(self, generator):
        assert generator.generate([]) == []
        assert await generator.agenerate([]) == []

    def test_one_generation_per_prompt(self, generator):
        out = generator.generate(PROMPTS, max_tokens=CAP)
        assert isinstance(out, list) and len(out) == len(PROMPTS)
        for generation in out:
            assert isinstance(generation, Generation) and isinstance(generation.text, str)
            assert generation.finish_reason in ("stop", "length")
            assert isinstance(generation.model, str) and generation.model

    def test_each_reply_belongs_to_its_prompt(self, generator):
        alone = [generator.generate([p], max_tokens=CAP)[0] for p in PROMPTS]
        assert len({signature(g) for g in alone}) == len(PROMPTS), "the fixture must answer each prompt differently"
        batched = generator.generate(PROMPTS, max_tokens=CAP)
        assert [signature(g) for g in batched] == [signature(g) for g in alone]
        backwards = generator.generate(PROMPTS[::-1], max_tokens=CAP)
        assert [signature(g) for g in backwards] == [signature(g) for g in alone[::-1]]

    def test_usage_is_counted_or_honestly_absent(self, generator, count_prompt):
        out = generator.generate(PROMPTS, max_tokens=CAP)
        if self.cannot_count_tokens:
            assert all(g.usage.counter == "none" and g.usage.total_tokens == 0 for g in out)
            return
        assert len({g.usage.counter for g in out}) == 1 and out[0].usage.counter not in ("", "none")
        for prompt, generation in zip(PROMPTS, out, strict=True):
            usage = generation.usage
            assert usage.input_tokens > 0 and usage.output_tokens > 0
            assert usage.cached_input_tokens <= usage.input_tokens and usage.reasoning_tokens <= usage.output_tokens
            if self.cannot_cap_tokens is None:
                assert usage.output_tokens <= CAP
            if count_prompt is not None:
                assert usage.input_tokens == count_prompt(prompt)
        inputs = [g.usage.input_tokens for g in out]
        assert inputs == sorted(set(inputs)), f"a longer prompt must cost more input tokens, got {inputs}"

    def test_max_tokens_caps_the_reply(self, generator):
        [full] = generator.generate([PROMPTS[-1]], max_tokens=LONG)
        [capped] = generator.generate([PROMPTS[-1]], max_tokens=CAP)
        if self.cannot_cap_tokens:
            assert isinstance(capped, Generation) and capped.finish_reason in ("stop", "length")
            return
        assert full.finish_reason == "length", "the fixture must write at least LONG tokens when nothing stops it"
        assert capped.finish_reason == "length"
        # A cut may split a multi-byte character, which decodes as U+FFFD.
        assert full.text.startswith(capped.text.rstrip("\ufffd")) and len(capped.text) < len(full.text)
        if self.cannot_count_tokens is None:
            assert (capped.usage.output_tokens, full.usage.output_tokens) == (CAP, LONG)

    def test_stop_strings_end_the_reply_and_are_not_returned(self, generator):
        [full] = generator.generate([PROMPTS[-1]], max_tokens=LONG)
        stop, before = stop_inside(full.text)
        [cut] = generator.generate([PROMPTS[-1]], max_tokens=LONG, stop=[NEVER, stop])
        assert cut.text == before and stop not in cut.text
        assert cut.finish_reason == "stop"
        if self.cannot_count_tokens is None:
            assert cut.usage.output_tokens < full.usage.output_tokens
            assert cut.usage.input_tokens == full.usage.input_tokens

    async def test_async_twin_gives_the_same_results(self, generator):
        [full] = generator.generate([PROMPTS[-1]], max_tokens=LONG)
        stop, _ = stop_inside(full.text)
        cases = ({"max_tokens": CAP}, {"max_tokens": LONG, "stop": [stop]}, {"temperature": 0, "max_tokens": 3})
        for settings in cases:
            assert await generator.agenerate(PROMPTS, **settings) == generator.generate(PROMPTS, **settings), settings

    @pytest.mark.parametrize("mode", ["generate", "agenerate"])
    @pytest.mark.parametrize(("arguments", "names"), BAD_CALLS)
    def test_bad_arguments_fail_naming_the_argument(self, generator, mode, arguments, names):
        settings = {"prompts": [PROMPTS[0]], **arguments}
        with pytest.raises((TypeError, ValueError), match=names):
            call(generator, mode, settings.pop("prompts"), **settings)


class TinyModelContract(GeneratorContract):
    """The contract for a generator over the tiny random llama of tests/tiny_models.py (the
    ``tiny_generator`` fixture), whatever stands between: its prompts must cost exactly what the
    model's chat template encodes."""

    @pytest.fixture()
    def count_prompt(self, tiny_generator):
        return lambda conversation: len(tiny_generator.encode_chat(conversation))
