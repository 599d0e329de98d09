"""`FunctionGenerator` against the `Generator` contract, over a scripted function that echoes the
question word by word and honours caps and stop strings itself (the wrapper passes them on)."""

from __future__ import annotations

import pytest
from contract.generator_contract import GeneratorContract

from tale_integrations.core.generation import FunctionGenerator, Generation, Usage

#: How many words the echo writes when nothing stops it.
LENGTH = 40


def words(text: str) -> int:
    return len(text.split())


def echo(messages, *, max_tokens, stop, temperature) -> Generation:
    """The last message's words, repeated up to ``LENGTH`` words, a cap or a stop string; counted in words."""
    said = messages[-1]["content"].split()
    limit = min(max_tokens or LENGTH, LENGTH)
    text = " ".join(said[i % len(said)] for i in range(limit))
    finish = "length" if limit < LENGTH else "stop"
    cuts = [text.find(s) for s in stop or () if s in text]
    if cuts:
        text, finish = text[: min(cuts)], "stop"
    usage = Usage(input_tokens=sum(words(m["content"]) for m in messages), output_tokens=words(text), counter="words")
    return Generation(text=text, usage=usage, finish_reason=finish, model="echo")


class TestFunctionGenerator(GeneratorContract):
    @pytest.fixture()
    def generator(self):
        return FunctionGenerator(echo, model_name="echo")

    @pytest.fixture()
    def count_prompt(self):
        return lambda conversation: sum(words(m["content"]) for m in conversation)
