"""`ChatTaleHF` on a tiny thinking model: the thinking as LangChain reasoning content, apart from the
answer, with its tokens in ``usage_metadata``; thinking budgets per model and per call."""

from __future__ import annotations

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("torch")

from langchain_core.messages import AIMessage, HumanMessage  # noqa: E402
from tiny_models import build_chain_model, build_thinking_tokenizer  # noqa: E402

from tale_integrations.backends.hf import HFGenerator  # noqa: E402
from tale_integrations.backends.hf.settings import ThinkingEnforcement  # noqa: E402
from tale_integrations.langchain import ChatTaleHF  # noqa: E402

#: Opens a block and thinks " 7" until the block is closed for it, then answers [[40]].
NEVER_CLOSES = {"Ċ": "<think>", "<think>": " 7", "</think>": "[[40]]"}


@pytest.fixture(scope="module")
def thinker():
    tok = build_thinking_tokenizer()
    model = build_chain_model(tok, {**NEVER_CLOSES, "[[40]]": tok.eos_token}, default=" 7")
    return HFGenerator.from_model(model, tok, model_name="thinker", thinking=ThinkingEnforcement(answer_reserve=8))


def test_reasoning_comes_apart_from_the_answer(thinker):
    chat = ChatTaleHF.from_generator(thinker, max_tokens=40, thinking_budget=3)
    reply = chat.invoke("What is 3 + 4?")
    assert reply.content == "[[40]]" and reply.text == "[[40]]"
    assert reply.additional_kwargs["reasoning_content"] == "7 7 7"
    assert reply.content_blocks[0] == {"type": "reasoning", "reasoning": "7 7 7"}
    assert reply.usage_metadata["output_token_details"] == {"reasoning": 5}
    assert reply.usage_metadata["output_tokens"] == 7
    per_call = chat.invoke("What is 3 + 4?", thinking_budget=6)
    assert per_call.additional_kwargs["reasoning_content"] == "7 7 7 7 7 7"
    assert per_call.usage_metadata["output_token_details"]["reasoning"] == 8


def test_streamed_chunks_carry_the_thinking_and_add_up(thinker):
    chat = ChatTaleHF.from_generator(thinker, max_tokens=40, thinking_budget=4)
    chunks = list(chat.stream("What is 3 + 4?"))
    assert any(c.additional_kwargs.get("reasoning_content") for c in chunks)
    total = chunks[0]
    for chunk in chunks[1:]:
        total += chunk
    reply = chat.invoke("What is 3 + 4?")
    assert total.content == reply.content == "[[40]]"
    assert total.additional_kwargs["reasoning_content"] == reply.additional_kwargs["reasoning_content"] == "7 7 7 7"
    assert total.usage_metadata == reply.usage_metadata


async def test_async_and_batches_too(thinker):
    chat = ChatTaleHF.from_generator(thinker, max_tokens=40)
    reply = await chat.ainvoke("q", thinking_budget=2)
    assert reply.additional_kwargs["reasoning_content"] == "7 7"
    chunks = [c async for c in chat.astream("q", thinking_budget=2)]
    assert "".join(c.additional_kwargs.get("reasoning_content", "") for c in chunks) == "7 7"
    replies = chat.batch(["a", "b"], thinking_budget=1)
    assert [r.additional_kwargs["reasoning_content"] for r in replies] == ["7", "7"]


def test_template_arguments_and_no_thinking(thinker):
    tok = thinker.tokenizer
    model = build_chain_model(tok, {"Ċ": "[[40]]", "[[40]]": tok.eos_token}, default=" 7")
    quiet = HFGenerator.from_model(model, tok, model_name="quiet")
    chat = ChatTaleHF.from_generator(quiet, max_tokens=10, chat_template_kwargs={"enable_thinking": False})
    reply = chat.invoke("q")
    assert reply.content == "[[40]]" and "reasoning_content" not in reply.additional_kwargs
    assert "output_token_details" not in reply.usage_metadata
    assert chat.get_num_tokens_from_messages([HumanMessage("q")]) == reply.usage_metadata["input_tokens"]
    assert reply.usage_metadata["input_tokens"] > len(quiet.encode_chat([{"role": "user", "content": "q"}]))


def test_a_history_with_reasoning_is_accepted(thinker):
    chat = ChatTaleHF.from_generator(thinker, max_tokens=40, thinking_budget=1)
    earlier = AIMessage(content=[{"type": "reasoning", "reasoning": "hmm"}, {"type": "text", "text": "[[40]]"}])
    reply = chat.invoke([HumanMessage("q"), earlier, HumanMessage("again?")])
    assert reply.content == "[[40]]"


def test_a_negative_thinking_budget_is_refused(thinker):
    with pytest.raises(ValueError, match="thinking_budget"):
        ChatTaleHF.from_generator(thinker, thinking_budget=-1)
    chat = ChatTaleHF.from_generator(thinker, max_tokens=40)
    with pytest.raises(ValueError, match="thinking_budget"):
        chat.invoke("q", thinking_budget=-2)
