"""`TaleHFLLM` on a tiny thinking model: the thinking in LlamaIndex's thinking fields (a `ThinkingBlock`,
``thinking_delta``), apart from the answer, with exact counts; thinking budgets per model and per call."""

from __future__ import annotations

import pytest

pytest.importorskip("llama_index.core")
pytest.importorskip("torch")

from llama_index.core.base.llms.types import TextBlock, ThinkingBlock  # noqa: E402
from llama_index.core.llms import ChatMessage, MessageRole  # noqa: E402
from tiny_models import build_chain_model, build_thinking_tokenizer  # noqa: E402

from tale_integrations.backends.hf import HFGenerator  # noqa: E402
from tale_integrations.backends.hf.settings import ThinkingEnforcement  # noqa: E402
from tale_integrations.llama_index import TaleHFLLM  # noqa: E402

Q = [ChatMessage(role=MessageRole.USER, content="What is 3 + 4?")]


@pytest.fixture(scope="module")
def thinker():
    tok = build_thinking_tokenizer()
    script = {"Ċ": "<think>", "<think>": " 7", "</think>": "[[40]]", "[[40]]": tok.eos_token}
    model = build_chain_model(tok, script, default=" 7")
    return HFGenerator.from_model(model, tok, model_name="thinker", thinking=ThinkingEnforcement(answer_reserve=8))


def test_chat_puts_the_thinking_in_a_thinking_block(thinker):
    llm = TaleHFLLM.from_generator(thinker, max_new_tokens=40, thinking_budget=3)
    response = llm.chat(Q)
    assert response.message.content == "[[40]]"
    thinking, text = response.message.blocks
    assert isinstance(thinking, ThinkingBlock) and isinstance(text, TextBlock)
    assert thinking.content == "7 7 7" and thinking.num_tokens == 5
    assert response.additional_kwargs["reasoning_tokens"] == 5 and response.additional_kwargs["completion_tokens"] == 7
    assert response.raw["usage"]["completion_tokens_details"] == {"reasoning_tokens": 5}
    assert llm.chat(Q, thinking_budget=1).message.blocks[0].content == "7"


def test_streams_carry_thinking_deltas(thinker):
    llm = TaleHFLLM.from_generator(thinker, max_new_tokens=40, thinking_budget=4)
    pieces = list(llm.stream_chat(Q))
    assert "".join(p.additional_kwargs.get("thinking_delta", "") for p in pieces) == "7 7 7 7"
    assert "".join(p.delta or "" for p in pieces) == "[[40]]"
    last = pieces[-1]
    assert last.message.blocks[0].content == "7 7 7 7" and last.message.content == "[[40]]"
    assert last.additional_kwargs["reasoning_tokens"] == 6


async def test_async_completion_and_batches(thinker):
    llm = TaleHFLLM.from_generator(thinker, max_new_tokens=40)
    done = await llm.acomplete("q", thinking_budget=2)
    assert done.text == "[[40]]" and done.additional_kwargs["thinking"] == "7 7"
    pieces = [p async for p in await llm.astream_complete("q", thinking_budget=2)]
    assert "".join(p.additional_kwargs.get("thinking_delta", "") for p in pieces) == "7 7"
    assert pieces[-1].additional_kwargs["thinking"] == "7 7"
    responses = llm.batch_chat([Q, Q], thinking_budget=1)
    assert [r.message.blocks[0].content for r in responses] == ["7", "7"]
    # a thinking block in the history is dropped, not refused
    history = [*Q, ChatMessage(role=MessageRole.ASSISTANT, blocks=[ThinkingBlock(content="hmm"), TextBlock(text="7")]),
               ChatMessage(role=MessageRole.USER, content="sure?")]
    assert llm.chat(history, thinking_budget=1).message.content == "[[40]]"
