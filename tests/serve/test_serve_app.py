"""`tale serve` under uvicorn, spoken to with the official openai SDK (sync and async, plain and streamed).

The scripted tiny model (``scripted_generator(" 7")``) greedily writes " 7" forever, so every text
and every token count is known: with ``max_tokens=5`` the answer is " 7" * 5 and 5 tokens.
"""

from __future__ import annotations

import httpx
import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("torch")

from tale_integrations.core.prompts import estimation_messages, question_prompt  # noqa: E402

QUESTION = "What is 2 + 3?"


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def client(url: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


def aclient(url: str, key: str = "unused") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


def test_chat_completion_has_exact_text_and_usage(serve, seven):
    url = serve(seven)
    messages = [{"role": "system", "content": "Be brief."}, *user(QUESTION)]
    r = client(url).chat.completions.create(model="seven", messages=messages, max_tokens=5)
    assert r.object == "chat.completion" and r.model == "seven" and r.id.startswith("chatcmpl-")
    [choice] = r.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == " 7" * 5
    assert choice.finish_reason == "length"
    assert r.usage.prompt_tokens == len(seven.encode_chat(messages))
    assert r.usage.completion_tokens == 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + 5


def test_chat_stream_joins_to_the_same_answer_with_usage_last(serve, seven):
    url = serve(seven)
    chunks = list(client(url).chat.completions.create(
        model="seven", messages=user(QUESTION), max_tokens=5, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == " 7" * 5
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-1].choices == []
    assert chunks[-1].usage.prompt_tokens == len(seven.encode_chat(user(QUESTION)))
    assert chunks[-1].usage.completion_tokens == 5


def test_stream_without_include_usage_has_no_usage_chunk(serve, seven):
    url = serve(seven)
    with httpx.stream("POST", f"{url}/v1/chat/completions", json={
        "model": "seven", "messages": user("hi"), "max_tokens": 3, "stream": True,
    }) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)
    assert not any('"usage"' in line for line in lines)


async def test_async_client_plain_and_streamed(serve, seven):
    url = serve(seven)
    c = aclient(url)
    r = await c.chat.completions.create(model="seven", messages=user(QUESTION), max_tokens=4)
    assert r.choices[0].message.content == " 7" * 4
    assert r.usage.completion_tokens == 4
    stream = await c.chat.completions.create(model="seven", messages=user(QUESTION), max_tokens=4, stream=True,
                                             stream_options={"include_usage": True})
    pieces, usage = [], None
    async for chunk in stream:
        pieces += [chunk.choices[0].delta.content or ""] if chunk.choices else []
        usage = chunk.usage or usage
    assert "".join(pieces) == " 7" * 4
    assert usage.completion_tokens == 4 and usage.prompt_tokens == r.usage.prompt_tokens
    await c.close()


def test_answers_equal_the_backend_called_directly(serve, tiny_generator):
    url = serve(tiny_generator)
    messages = user("a question for a random model")
    [direct] = tiny_generator.generate([messages], max_tokens=7)
    r = client(url).chat.completions.create(model="tiny-llama", messages=messages, max_tokens=7)
    assert r.choices[0].message.content == direct.text
    assert r.usage.completion_tokens == direct.usage.output_tokens
    assert r.choices[0].finish_reason == direct.finish_reason


def test_stop_strings_match_the_backend(serve, seven):
    url = serve(seven)
    [direct] = seven.generate([user("count")], max_tokens=20, stop=["7 7 7"])
    r = client(url).chat.completions.create(model="seven", messages=user("count"), max_tokens=20, stop="7 7 7")
    assert r.choices[0].message.content == direct.text
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == direct.usage.output_tokens


def test_end_of_turn_finishes_with_stop(serve, scripted_generator, tiny_tokenizer):
    url = serve(scripted_generator(tiny_tokenizer.eos_token, model_name="eos"))
    r = client(url).chat.completions.create(model="eos", messages=user("hi"), max_tokens=10)
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == ""
    assert r.usage.completion_tokens == 1


def test_completions_apply_the_prompt_as_one_user_turn(serve, seven):
    url = serve(seven)
    c = client(url)
    r = c.completions.create(model="seven", prompt=QUESTION, max_tokens=3)
    assert r.object == "text_completion" and r.choices[0].text == " 7" * 3
    assert r.usage.prompt_tokens == len(seven.encode_chat(user(QUESTION)))
    assert c.completions.create(model="seven", prompt=QUESTION).usage.completion_tokens == 16  # OpenAI's default
    chunks = list(c.completions.create(model="seven", prompt=QUESTION, max_tokens=3, stream=True,
                                       stream_options={"include_usage": True}))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == " 7" * 3
    assert chunks[-1].usage.completion_tokens == 3


def test_models_and_health(serve, seven):
    url = serve(seven, served_model_name="my-model")
    c = client(url)
    assert [m.id for m in c.models.list()] == ["my-model"]
    assert c.models.retrieve("my-model").id == "my-model"
    assert httpx.get(f"{url}/health").json() == {"status": "ok", "model": "my-model"}
    r = c.chat.completions.create(model="my-model", messages=user("hi"), max_tokens=2)
    assert r.model == "my-model"


def test_api_key_is_required_on_v1_but_not_on_health(serve, seven):
    url = serve(seven, api_key="s3cret")
    with pytest.raises(openai.AuthenticationError) as info:
        client(url, "wrong").chat.completions.create(model="seven", messages=user("hi"), max_tokens=2)
    assert info.value.status_code == 401 and info.value.code == "invalid_api_key"
    no_key = httpx.get(f"{url}/v1/models")
    assert no_key.status_code == 401 and no_key.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{url}/health").status_code == 200
    r = client(url, "s3cret").chat.completions.create(model="seven", messages=user("hi"), max_tokens=2)
    assert r.choices[0].message.content == " 7" * 2


def test_default_cap_is_the_generators_max_new_tokens(serve, scripted_generator):
    gen = scripted_generator(" 7", model_name="seven", max_new_tokens=9)
    url = serve(gen)
    r = client(url).chat.completions.create(model="seven", messages=user("hi"))
    assert r.usage.completion_tokens == 9


# -- TALE on the server side -------------------------------------------------------------------

def test_tale_budget_rewrites_the_last_user_message(serve, seven):
    url = serve(seven)
    messages = [*user("first question"), {"role": "assistant", "content": "ok"}, *user(QUESTION)]
    r = client(url).chat.completions.create(model="seven", messages=messages, max_tokens=5,
                                            extra_body={"tale_budget": 30})
    budgeted = messages[:-1] + user(question_prompt(QUESTION, budget=30, format="chat"))
    assert r.usage.prompt_tokens == len(seven.encode_chat(budgeted))
    assert r.usage.completion_tokens == 5
    tale = r.model_dump()["tale"]
    assert tale["budget"] == 30 and tale["budget_raw"] == 30 and tale["budget_source"] == "caller"
    assert tale["estimator"] is None and tale["estimator_usage"] is None and tale["enforced"] is False


def test_tale_auto_estimates_with_the_served_model(serve, scripted_generator):
    gen = scripted_generator("[[40]]", model_name="forty")
    url = serve(gen)
    r = client(url).chat.completions.create(model="forty", messages=user(QUESTION), max_tokens=50,
                                            extra_body={"tale_budget": "auto"})
    tale = r.model_dump()["tale"]
    assert tale["budget"] == 40 and tale["budget_raw"] == 40
    assert tale["estimator"] == "zero-shot:forty"
    est = tale["estimator_usage"]
    assert est["prompt_tokens"] == len(gen.encode_chat(estimation_messages(QUESTION)))
    assert est["completion_tokens"] == 64  # the estimator's cap: the scripted model never stops
    # `usage` is the answer call only.
    assert r.usage.prompt_tokens == len(gen.encode_chat(user(question_prompt(QUESTION, budget=40, format="chat"))))
    assert r.usage.completion_tokens == 50


def test_tale_auto_budget_is_capped_by_max_tokens_and_streams_on_the_first_chunk(serve, scripted_generator):
    gen = scripted_generator("[[40]]", model_name="forty")
    url = serve(gen)
    chunks = list(client(url).chat.completions.create(
        model="forty", messages=user(QUESTION), max_tokens=30, stream=True, extra_body={"tale_budget": "auto"}))
    tale = chunks[0].model_dump()["tale"]
    assert tale["budget"] == 30 and tale["budget_raw"] == 40 and "lowered to cap" in tale["budget_adjusted"]


def test_tale_enforce_holds_the_answer_to_its_budget(serve, scripted_generator):
    gen = scripted_generator(" 7", model_name="seven", enforce_budget=True)
    url = serve(gen)
    c = client(url)
    body = {"tale_budget": 5, "tale_enforce": True}
    r = c.chat.completions.create(model="seven", messages=user(QUESTION), max_tokens=60, extra_body=body)
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content.startswith(" 7" * 5 + "\n\nIn short,")
    assert r.usage.completion_tokens <= 5 + gen.enforcement.answer_reserve
    assert r.model_dump()["tale"]["enforced"] is True
    chunks = list(c.chat.completions.create(model="seven", messages=user(QUESTION), max_tokens=60, stream=True,
                                            extra_body=body))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == r.choices[0].message.content


@pytest.mark.slow
def test_embedded_model_answers_with_a_tale_budget(serve, embedded_generator):
    url = serve(embedded_generator, served_model_name="smol")
    question = "A farmer has 12 cows and buys 5 more. How many cows does he have?"
    r = client(url).chat.completions.create(model="smol", messages=user(question), max_tokens=64,
                                            extra_body={"tale_budget": "auto"})
    tale = r.model_dump()["tale"]
    assert 1 <= tale["budget"] <= 64 and tale["estimator_usage"]["completion_tokens"] >= 1
    budgeted = user(question_prompt(question, budget=tale["budget"], format="chat"))
    assert r.usage.prompt_tokens == len(embedded_generator.encode_chat(budgeted))
    assert 1 <= r.usage.completion_tokens <= 64 and r.choices[0].message.content.strip()
