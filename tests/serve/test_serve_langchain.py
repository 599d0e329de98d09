"""LangChain's `ChatOpenAI` pointed at `tale serve` (base_url, api_key): plain, streamed, async."""

from __future__ import annotations

import pytest

pytest.importorskip("langchain_openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("torch")

from langchain_core.messages import HumanMessage, SystemMessage  # noqa: E402
from langchain_openai import ChatOpenAI  # noqa: E402

MESSAGES = [SystemMessage("Be brief."), HumanMessage("What is 2 + 3?")]
AS_DICTS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 3?"}]


def chat_model(url: str, **kwargs) -> ChatOpenAI:
    return ChatOpenAI(model="seven", base_url=f"{url}/v1", api_key="s3cret", max_retries=0, **kwargs)


def test_invoke_and_stream_with_exact_usage(serve, seven):
    url = serve(seven, api_key="s3cret")
    llm = chat_model(url, max_tokens=5)
    message = llm.invoke(MESSAGES)
    assert message.content == " 7" * 5
    prompt_tokens = len(seven.encode_chat(AS_DICTS))
    assert message.usage_metadata["input_tokens"] == prompt_tokens
    assert message.usage_metadata["output_tokens"] == 5
    assert message.response_metadata["finish_reason"] == "length"

    chunks = list(chat_model(url, max_tokens=5, stream_usage=True).stream(MESSAGES))
    assert "".join(c.content for c in chunks) == " 7" * 5
    total = sum(chunks[1:], chunks[0])
    assert total.usage_metadata["input_tokens"] == prompt_tokens
    assert total.usage_metadata["output_tokens"] == 5


async def test_ainvoke_and_astream(serve, seven):
    url = serve(seven, api_key="s3cret")
    llm = chat_model(url, max_tokens=3, stream_usage=True)
    assert (await llm.ainvoke(MESSAGES)).content == " 7" * 3
    chunks = [c async for c in llm.astream(MESSAGES)]
    assert "".join(c.content for c in chunks) == " 7" * 3
    assert sum(chunks[1:], chunks[0]).usage_metadata["output_tokens"] == 3


def test_tale_budget_through_extra_body(serve, seven):
    url = serve(seven, api_key="s3cret")
    message = chat_model(url, max_tokens=4, extra_body={"tale_budget": 25}).invoke(MESSAGES)
    assert message.content == " 7" * 4
    assert message.usage_metadata["input_tokens"] > len(seven.encode_chat(AS_DICTS))  # the budgeted prompt
