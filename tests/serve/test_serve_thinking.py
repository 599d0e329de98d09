"""Thinking models through `tale serve`: ``reasoning_effort``, ``thinking_token_budget``, ``chat_template_kwargs``
and ``tale_budget`` set the thinking budget; the thinking text comes back apart (``reasoning`` and
``reasoning_content``, plain and streamed) with ``completion_tokens_details.reasoning_tokens``; real clients
(``openai``, LangChain's ``ChatOpenAI`` and ``ChatDeepSeek``) on loopback.

The model is a chain model on the tiny tokenizer with a thinking template: after the assistant header it opens
``<think>``, thinks `` 7`` until told otherwise, and after ``</think>`` answers ``[[40]]`` and ends its turn; so
with thinking budget B its thinking is exactly B tokens and the whole reply is known.
"""

from __future__ import annotations

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("torch")

from tiny_models import build_chain_model, build_thinking_tokenizer  # noqa: E402

MESSAGES = [{"role": "user", "content": "What is 2 + 3?"}]
CAP = 40


@pytest.fixture(scope="module")
def thinker():
    from tale_integrations.backends.hf import HFGenerator
    from tale_integrations.backends.hf.settings import ThinkingEnforcement

    tok = build_thinking_tokenizer()
    script = {"Ċ": "<think>", "<think>": " 7", "</think>": "[[40]]", "[[40]]": tok.eos_token}
    return HFGenerator.from_model(build_chain_model(tok, script, default=" 7"), tok, model_name="thinker",
                                  thinking=ThinkingEnforcement(answer_reserve=8), max_new_tokens=32)


@pytest.fixture(scope="module", params=["continuous", "microbatch"])
def url(request, serve_module, thinker) -> str:
    return serve_module(thinker, scheduler=request.param, max_tokens_limit=200)


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def direct(thinker, budget: int | None, max_tokens: int = CAP, **kwargs):
    """The same request straight to the backend."""
    return thinker.generate([MESSAGES], max_tokens=max_tokens, thinking_budgets=[budget], **kwargs)[0]


def streamed(url: str, **ask) -> tuple[str, str, str, object, str]:
    """(content, reasoning, reasoning_content, usage, finish reason) of a stream, joined."""
    content = reasoning = reasoning_content = ""
    usage = finish = None
    for chunk in client(url).chat.completions.create(model="thinker", messages=MESSAGES, stream=True,
                                                     stream_options={"include_usage": True}, **ask):
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            extra = choice.delta.model_extra or {}
            content += choice.delta.content or ""
            reasoning += extra.get("reasoning") or ""
            reasoning_content += extra.get("reasoning_content") or ""
            finish = choice.finish_reason or finish
    return content, reasoning, reasoning_content, usage, finish


@pytest.mark.parametrize("budget", [0, 1, 3])
def test_thinking_token_budget_plain_and_streamed_agree_with_the_backend(url, thinker, budget):
    ask = {"max_tokens": CAP, "extra_body": {"thinking_token_budget": budget}}
    r = client(url).chat.completions.create(model="thinker", messages=MESSAGES, **ask)
    expected = direct(thinker, budget)
    message = r.choices[0].message
    assert message.content == expected.text == "[[40]]"
    assert message.model_extra["reasoning"] == message.model_extra["reasoning_content"] == expected.reasoning
    assert expected.reasoning == " ".join(["7"] * budget)  # exactly B thinking tokens
    details = r.usage.completion_tokens_details
    assert details.reasoning_tokens == expected.usage.reasoning_tokens == budget + 2  # the markers and B tokens
    assert r.usage.completion_tokens == expected.usage.output_tokens
    assert r.choices[0].finish_reason == "stop"

    content, reasoning, reasoning_content, usage, finish = streamed(url, **ask)
    assert (content, finish) == (message.content, "stop")
    assert reasoning.strip() == reasoning_content.strip() == expected.reasoning
    assert usage.completion_tokens_details.reasoning_tokens == details.reasoning_tokens
    assert usage.completion_tokens == r.usage.completion_tokens


@pytest.mark.parametrize(("effort", "budget"), [("none", 0), ("minimal", 256)])
def test_reasoning_effort_maps_to_a_thinking_budget_within_the_cap(url, thinker, effort, budget):
    """``none`` closes the block at once; ``minimal`` (256 tokens) is shortened to what the cap leaves after
    the markers and the answer's reserve, so the answer still comes."""
    r = client(url).chat.completions.create(model="thinker", messages=MESSAGES, max_tokens=CAP,
                                            reasoning_effort=effort)
    expected = direct(thinker, budget)
    assert r.choices[0].message.content == expected.text == "[[40]]"
    assert r.usage.completion_tokens_details.reasoning_tokens == expected.usage.reasoning_tokens
    assert r.choices[0].message.model_extra["reasoning"] == expected.reasoning
    assert (expected.usage.reasoning_tokens == 2) is (effort == "none")
    assert r.usage.completion_tokens <= CAP


def test_no_cap_given_makes_room_for_the_thinking_budget(url, thinker):
    budget = 100  # more than the server's default cap (the generator's 32) holds
    assert thinker.max_new_tokens < budget
    r = client(url).chat.completions.create(model="thinker", messages=MESSAGES,
                                            extra_body={"thinking_token_budget": budget})
    assert r.usage.completion_tokens_details.reasoning_tokens == budget + 2
    assert r.choices[0].message.content == "[[40]]"


def test_include_reasoning_false_hides_the_text_not_the_count(url):
    r = client(url).chat.completions.create(model="thinker", messages=MESSAGES, max_tokens=CAP,
                                            extra_body={"thinking_token_budget": 2, "include_reasoning": False})
    assert "reasoning" not in r.choices[0].message.model_extra
    assert "reasoning_content" not in r.choices[0].message.model_extra
    assert r.usage.completion_tokens_details.reasoning_tokens == 4
    _, reasoning, reasoning_content, _, _ = streamed(url, max_tokens=CAP, extra_body={
        "thinking_token_budget": 2, "include_reasoning": False})
    assert reasoning == reasoning_content == ""


def test_chat_template_kwargs_reach_the_template(url, thinker):
    kwargs = {"enable_thinking": False}
    r = client(url).chat.completions.create(model="thinker", messages=MESSAGES, max_tokens=4,
                                            extra_body={"chat_template_kwargs": kwargs})
    assert r.usage.prompt_tokens == len(thinker.encode_chat(MESSAGES, chat_template_kwargs=kwargs))
    assert r.usage.prompt_tokens > len(thinker.encode_chat(MESSAGES))  # the closed empty block


def test_tale_budget_becomes_the_thinking_budget(url, thinker):
    r = client(url).chat.completions.create(model="thinker", messages=MESSAGES, max_tokens=CAP,
                                            extra_body={"tale_budget": 3})
    tale = r.model_extra["tale"]
    assert tale["budget"] == 3 and tale["budget_via"] == "thinking" and tale["enforced"] is True
    assert tale["thinking"]["engine"] == "hf" and tale["thinking"]["budget"] == 3
    assert r.usage.prompt_tokens == len(thinker.encode_chat(MESSAGES))  # the prompt is left as it is
    assert r.usage.completion_tokens_details.reasoning_tokens == 5
    assert r.choices[0].message.model_extra["reasoning"] == "7 7 7"


def test_tale_budget_is_lowered_to_what_the_cap_holds(url, thinker):
    r = client(url).chat.completions.create(model="thinker", messages=MESSAGES, max_tokens=20,
                                            extra_body={"tale_budget": 30})
    tale = r.model_extra["tale"]
    assert tale["budget"] == 30 and tale["budget_via"] == "thinking"
    lowered = tale["thinking"]["budget"]
    assert lowered < 30 and "lowered to fit the output limit (20)" in tale["thinking"]["adjusted"]
    assert r.usage.completion_tokens_details.reasoning_tokens == lowered + 2
    assert r.choices[0].message.content == "[[40]]"  # the answer kept its reserve


def test_a_cap_that_cannot_hold_the_markers_and_the_answer_is_a_clear_400(url):
    with pytest.raises(openai.BadRequestError) as refused:
        client(url).chat.completions.create(model="thinker", messages=MESSAGES, max_tokens=12,
                                            extra_body={"thinking_token_budget": 1})
    assert "max_tokens=12 leaves no room to think" in refused.value.body["message"]


def test_chat_openai_sends_reasoning_effort_and_reads_reasoning_tokens(url, thinker):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model="thinker", base_url=f"{url}/v1", api_key="unused", max_retries=0, max_tokens=CAP,
                     reasoning_effort="none", stream_usage=True)
    message = llm.invoke("What is 2 + 3?")
    assert message.content == "[[40]]"  # the thinking is not in the answer
    assert message.usage_metadata["output_token_details"]["reasoning"] == 2
    budgeted = llm.model_copy(update={"reasoning_effort": None, "extra_body": {"thinking_token_budget": 3}})
    chunks = list(budgeted.stream("What is 2 + 3?"))
    total = sum(chunks[1:], chunks[0])
    assert total.content == "[[40]]"
    assert total.usage_metadata["output_token_details"]["reasoning"] == 5 == \
        budgeted.invoke("What is 2 + 3?").usage_metadata["output_token_details"]["reasoning"]


def test_langchain_reads_the_reasoning_text_with_a_reasoning_content_class(url):
    """`ChatOpenAI` keeps only OpenAI's own fields; LangChain's classes for engines that return the thinking
    (here ``ChatDeepSeek``, which reads ``reasoning_content``) get the text, plain and streamed."""
    deepseek = pytest.importorskip("langchain_deepseek")
    llm = deepseek.ChatDeepSeek(model="thinker", api_base=f"{url}/v1", api_key="unused", max_retries=0,
                                max_tokens=CAP, extra_body={"thinking_token_budget": 3})
    message = llm.invoke("What is 2 + 3?")
    assert message.content == "[[40]]"
    assert message.additional_kwargs["reasoning_content"] == "7 7 7"
    chunks = list(llm.stream("What is 2 + 3?"))
    assert "".join(c.additional_kwargs.get("reasoning_content", "") for c in chunks).strip() == "7 7 7"
    assert "".join(c.content for c in chunks) == "[[40]]"


def test_auto_estimates_without_thinking_then_budgets_the_thinking(url, thinker):
    """The zero-shot estimate is asked with a thinking budget of 0, so its cap goes to the number: the model
    answers "[[40]]" at once, and 40 becomes the thinking budget (lowered to what the cap holds)."""
    r = client(url).chat.completions.create(model="thinker", messages=MESSAGES, max_tokens=60,
                                            extra_body={"tale_budget": "auto"})
    tale = r.model_extra["tale"]
    assert tale["estimator_reply"] == "[[40]]" and tale["budget"] == 40
    assert tale["estimator_usage"]["completion_tokens_details"]["reasoning_tokens"] == 2  # an empty block
    assert tale["budget_via"] == "thinking" and tale["thinking"]["budget"] == 40
    assert r.usage.completion_tokens_details.reasoning_tokens == 42
    assert r.choices[0].message.content == "[[40]]"
