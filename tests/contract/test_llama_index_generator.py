"""`LlamaIndexGenerator` against the `Generator` contract: over `TaleHFLLM` on the tiny random llama
(exact counts), and over LlamaIndex's own `MockLLM`, which echoes the prompt, reports no usage and
ignores a per-call cap (so those two checks take their weaker form)."""

from __future__ import annotations

import pytest

pytest.importorskip("llama_index.core")
pytest.importorskip("torch")
pytest.importorskip("transformers")

from contract.generator_contract import GeneratorContract, TinyModelContract  # noqa: E402
from llama_index.core.llms import MockLLM  # noqa: E402

from tale_integrations.llama_index import LlamaIndexGenerator, TaleHFLLM  # noqa: E402


class TestLlamaIndexGenerator(TinyModelContract):
    @pytest.fixture()
    def generator(self, tiny_generator):
        return LlamaIndexGenerator(TaleHFLLM.from_generator(tiny_generator))


class TestLlamaIndexGeneratorOverMockLLM(GeneratorContract):
    cannot_count_tokens = "MockLLM reports no usage, and no counter is given to the adapter"
    cannot_cap_tokens = "MockLLM takes its cap from its own max_tokens field and ignores a per-call one"

    @pytest.fixture()
    def generator(self):
        return LlamaIndexGenerator(MockLLM())
