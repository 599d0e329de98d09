"""`ChatModelGenerator` against the `Generator` contract, over a real LangChain chat model:
`ChatTaleHF` on the tiny random llama, whose reported usage is the model's own tokenizer count."""

from __future__ import annotations

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("torch")
pytest.importorskip("transformers")

from contract.generator_contract import TinyModelContract  # noqa: E402

from tale_integrations.langchain import ChatModelGenerator, ChatTaleHF  # noqa: E402


class TestChatModelGenerator(TinyModelContract):
    @pytest.fixture()
    def generator(self, tiny_generator):
        return ChatModelGenerator(ChatTaleHF.from_generator(tiny_generator))
