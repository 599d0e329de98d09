"""`tale serve --upstream`: the TALE front, on loopback, in front of a second `tale serve` standing in
for vLLM, spoken to with the official openai SDK and LangChain's `ChatOpenAI`.

The engine serves the scripted tiny model that greedily writes " 7" forever (or "[[40]]" forever, for
the zero-shot estimator), so every text and token count is known.
"""

from __future__ import annotations

import argparse
import json
import socket
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("torch")

from langchain_core.messages import HumanMessage  # noqa: E402
from langchain_openai import ChatOpenAI  # noqa: E402
from serve.conftest import Running  # noqa: E402

from tale_integrations.core.prompts import QuestionFormat, estimation_messages, question_prompt  # noqa: E402
from tale_integrations.core.thinking import ThinkingModel, ThinkingPolicy  # noqa: E402
from tale_integrations.serve.cli import add_serve_parser  # noqa: E402
from tale_integrations.serve.upstream import (  # noqa: E402
    UPSTREAM_API_KEY_ENV,
    UpstreamError,
    create_upstream_app,
    upstream_base_url,
)

QUESTION = "What is 2 + 3?"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}]
ENGINE_KEY = "engine-key"


def budgeted(budget: int) -> list[dict[str, str]]:
    return [MESSAGES[0], {"role": "user", "content": question_prompt(QUESTION, budget=budget,
                                                                      format=QuestionFormat.CHAT)}]


def client(url: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


@pytest.fixture()
def run_app() -> Iterator[Callable[[Any], str]]:
    """A factory: ``run_app(asgi_app)`` serves any ASGI app on loopback and returns its base URL."""
    started: list[Running] = []

    def start(app: Any) -> str:
        started.append(Running(app))
        return started[-1].url

    yield start
    for server in reversed(started):
        server.stop()


@pytest.fixture()
def front(run_app) -> Callable[..., str]:
    """A factory: ``front(engine_url, **create_upstream_app_kwargs)`` starts the front, returns its URL."""

    def start(upstream: str, **kwargs: Any) -> str:
        kwargs.setdefault("upstream_api_key", ENGINE_KEY)
        return run_app(create_upstream_app(upstream, **kwargs))

    return start


class Counted:
    """An ASGI app that records the path of every POST it passes on to ``app``."""

    def __init__(self, app: Any) -> None:
        self.app, self.posts = app, []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            self.posts.append(scope["path"])
        await self.app(scope, receive, send)


@pytest.fixture()
def engine(serve, seven) -> str:
    """The engine: `tale serve` over the " 7" model, behind an API key (as a vLLM would be)."""
    return serve(seven, api_key=ENGINE_KEY)


def test_plain_requests_pass_through_unchanged(engine, front, seven):
    url = front(engine)
    direct = client(engine, ENGINE_KEY).chat.completions.create(model="seven", messages=MESSAGES, max_tokens=5)
    r = client(url).chat.completions.create(model="seven", messages=MESSAGES, max_tokens=5)
    assert r.choices[0].message.content == direct.choices[0].message.content == " 7" * 5
    assert r.usage == direct.usage and r.usage.prompt_tokens == len(seven.encode_chat(MESSAGES))
    assert r.model == "seven" and "tale" not in (r.model_extra or {})
    c = client(url).completions.create(model="seven", prompt=QUESTION, max_tokens=3)
    assert c.choices[0].text == " 7" * 3 and c.usage.completion_tokens == 3
    assert [m.id for m in client(url).models.list()] == ["seven"]
    assert client(url).models.retrieve("seven").id == "seven"
    assert httpx.get(f"{url}/health").json() == {"status": "ok", "upstream": "ok"}


def test_a_stream_passes_through_chunk_by_chunk(engine, front):
    url = front(engine)
    ask = {"model": "seven", "messages": MESSAGES, "max_tokens": 5, "stream": True,
           "stream_options": {"include_usage": True}}
    direct = list(client(engine, ENGINE_KEY).chat.completions.create(**ask))
    chunks = list(client(url).chat.completions.create(**ask))
    assert len(chunks) == len(direct) == 8  # role, five tokens, finish, usage
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == " 7" * 5
    assert chunks[-1].usage == direct[-1].usage


def test_fixed_budget_rewrites_the_prompt_and_caps_the_output(engine, front, seven):
    url = front(engine, answer_reserve=5)
    r = client(url).chat.completions.create(model="seven", messages=MESSAGES, extra_body={"tale_budget": 10})
    assert r.usage.prompt_tokens == len(seven.encode_chat(budgeted(10)))
    assert r.usage.completion_tokens == 15  # no cap from the client: budget + answer_reserve
    assert r.choices[0].message.content == " 7" * 15
    tale = r.model_extra["tale"]
    assert tale["budget"] == 10 and tale["budget_source"] == "caller" and tale["estimator_usage"] is None
    assert tale["enforced"] is False and tale["budget_via"] == "prompt" and tale["thinking"] is None
    lower = client(url).chat.completions.create(model="seven", messages=MESSAGES, max_tokens=4,
                                                extra_body={"tale_budget": 10})
    assert lower.usage.completion_tokens == 4  # the client's own cap wins when it is lower
    c = client(url).completions.create(model="seven", prompt=QUESTION, extra_body={"tale_budget": 10})
    assert c.usage.completion_tokens == 15 and c.model_extra["tale"]["budget"] == 10
    as_chat = [{"role": "user", "content": question_prompt(QUESTION, budget=10, format=QuestionFormat.CHAT)}]
    assert c.usage.prompt_tokens == len(seven.encode_chat(as_chat))


def test_fixed_budget_streamed_carries_tale_on_the_first_chunk(engine, front):
    url = front(engine, answer_reserve=5)
    chunks = list(client(url).chat.completions.create(
        model="seven", messages=MESSAGES, stream=True, stream_options={"include_usage": True},
        extra_body={"tale_budget": 10}))
    assert chunks[0].model_extra["tale"]["budget"] == 10
    assert all("tale" not in (c.model_extra or {}) for c in chunks[1:])
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == " 7" * 15
    assert chunks[-1].usage.completion_tokens == 15


def test_auto_asks_the_engines_model_and_reports_its_usage(serve, scripted_generator, front):
    forty = scripted_generator("[[40]]", model_name="forty")
    url = front(serve(forty, api_key=ENGINE_KEY), answer_reserve=5)
    r = client(url).chat.completions.create(model="forty", messages=MESSAGES, extra_body={"tale_budget": "auto"})
    tale = r.model_extra["tale"]
    assert tale["budget"] == 40 and tale["budget_source"] == tale["estimator"] == "zero-shot:forty"
    estimate_prompt = len(forty.encode_chat(estimation_messages(QUESTION)))
    assert tale["estimator_usage"] == {"prompt_tokens": estimate_prompt, "completion_tokens": 64,  # its cap
                                       "total_tokens": estimate_prompt + 64,
                                       "completion_tokens_details": {"reasoning_tokens": 0}}
    assert r.usage.completion_tokens == 45  # usage is the answer call's; the estimate is in tale
    answer = [MESSAGES[0], {"role": "user", "content": question_prompt(QUESTION, budget=40,
                                                                        format=QuestionFormat.CHAT)}]
    assert r.usage.prompt_tokens == len(forty.encode_chat(answer))


def test_auto_with_the_learned_estimator_makes_no_estimator_call(run_app, seven, front):
    from tale_integrations.serve import create_app

    engine = Counted(create_app(seven, api_key=ENGINE_KEY))
    url = front(run_app(engine), estimator="learned", answer_reserve=5)
    r = client(url).chat.completions.create(model="seven", messages=MESSAGES, max_tokens=500,
                                            extra_body={"tale_budget": "auto"})
    tale = r.model_extra["tale"]
    assert tale["estimator"].startswith("learned") and tale["estimator_usage"]["total_tokens"] == 0
    assert engine.posts == ["/v1/chat/completions"]  # the answer only
    assert r.usage.completion_tokens == tale["budget"] + 5
    assert r.usage.prompt_tokens == len(seven.encode_chat(budgeted(tale["budget"])))


def test_a_thinking_knob_carries_the_budget_instead_of_the_prompt(engine, front, seven):
    # A stand-in row whose budget field is one the stand-in engine accepts (``seed``, read and ignored),
    # so the request the knob builds is visible in what the engine answered.
    row = ThinkingModel(engine="vllm", family="stand-in", budget_field="seed")
    url = front(engine, thinking=row, thinking_policy=ThinkingPolicy(answer_reserve=5))
    r = client(url).chat.completions.create(model="seven", messages=MESSAGES, extra_body={"tale_budget": 10})
    tale = r.model_extra["tale"]
    assert tale["budget_via"] == "thinking" and tale["thinking"]["fields"] == {"seed": 10, "max_tokens": 15}
    assert r.usage.prompt_tokens == len(seven.encode_chat(MESSAGES))  # the prompt is left as it is
    assert r.usage.completion_tokens == 15  # the knob's cap: thinking allowance + its answer reserve


def test_openai_thinking_models_get_reasoning_effort_unless_told_not_to(serve, seven, front):
    engine = serve(seven, api_key=ENGINE_KEY, served_model_name="o3-mini")
    ask = {"model": "o3-mini", "messages": MESSAGES, "extra_body": {"tale_budget": 10}}
    with pytest.raises(openai.UnprocessableEntityError) as refused:  # the stand-in has no reasoning_effort
        client(front(engine)).chat.completions.create(**ask)
    assert refused.value.body["param"] == "reasoning_effort"
    r = client(front(engine, thinking=False, answer_reserve=5)).chat.completions.create(**ask)
    assert r.model_extra["tale"]["budget_via"] == "prompt" and r.usage.completion_tokens == 15


def test_chat_openai_through_the_front(engine, front):
    url = front(engine, api_key="front-key", answer_reserve=5)
    llm = ChatOpenAI(model="seven", base_url=f"{url}/v1", api_key="front-key", max_retries=0, stream_usage=True,
                     extra_body={"tale_budget": 10})
    message = llm.invoke([HumanMessage(QUESTION)])
    assert message.content == " 7" * 15 and message.usage_metadata["output_tokens"] == 15
    chunks = list(llm.stream([HumanMessage(QUESTION)]))
    total = sum(chunks[1:], chunks[0])
    assert total.content == " 7" * 15 and total.usage_metadata["output_tokens"] == 15
    plain = ChatOpenAI(model="seven", base_url=f"{url}/v1", api_key="front-key", max_retries=0, max_tokens=3)
    assert plain.invoke([HumanMessage(QUESTION)]).content == " 7" * 3


async def test_chat_openai_async_with_auto(engine, front):
    url = front(engine, api_key="front-key", answer_reserve=5)
    llm = ChatOpenAI(model="seven", base_url=f"{url}/v1", api_key="front-key", max_retries=0, stream_usage=True,
                     max_tokens=50, extra_body={"tale_budget": "auto"})
    message = await llm.ainvoke([HumanMessage(QUESTION)])
    # " 7" gives no [[N]]: the policy's fallback (128) is capped by the client's max_tokens (50)
    assert message.content == " 7" * 50
    chunks = [c async for c in llm.astream([HumanMessage(QUESTION)])]
    assert sum(chunks[1:], chunks[0]).usage_metadata["output_tokens"] == 50


@pytest.mark.parametrize("stream", [False, True])
def test_engine_errors_pass_on_with_their_status(engine, front, stream):
    url = front(engine)
    ask = {"messages": MESSAGES, "max_tokens": 2, "stream": stream}
    with pytest.raises(openai.NotFoundError) as missing:
        client(url).chat.completions.create(model="nope", **ask)
    assert missing.value.body["code"] == "model_not_found" and "`nope` does not exist" in missing.value.message
    with pytest.raises(openai.UnprocessableEntityError) as n:  # the engine's rule, not the front's
        client(url).chat.completions.create(model="seven", n=2, **ask)
    assert n.value.body["param"] == "n"
    with pytest.raises(openai.NotFoundError):  # the zero-shot estimate is the engine's call too
        client(url).chat.completions.create(model="nope", extra_body={"tale_budget": "auto"}, **ask)
    with pytest.raises(openai.AuthenticationError) as key:
        client(front(engine, upstream_api_key="wrong")).chat.completions.create(model="seven", **ask)
    assert key.value.body["code"] == "invalid_api_key"


def test_an_engine_that_cannot_be_reached_is_a_502(front):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the front starts: nothing listens there
    url = front(f"http://127.0.0.1:{port}")
    for body in ({"model": "m", "messages": MESSAGES}, {"model": "m", "messages": MESSAGES, "stream": True},
                 {"model": "m", "messages": MESSAGES, "tale_budget": "auto"}):
        r = httpx.post(f"{url}/v1/chat/completions", json=body)
        assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_unreachable"
        assert str(port) not in r.text
    health = httpx.get(f"{url}/health")
    assert health.status_code == 503 and health.json()["status"] == "unhealthy"


def test_an_engine_that_does_not_answer_in_time_is_a_504(engine, front):
    url = front(engine, timeout=0.05)
    r = httpx.post(f"{url}/v1/chat/completions", json={"model": "seven", "messages": MESSAGES, "max_tokens": 200})
    assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"


@pytest.mark.parametrize(("body", "status", "param"), [
    (b"{not json", 400, None),
    (b"[1, 2]", 400, None),
    (json.dumps({"model": "seven", "messages": MESSAGES, "tale_budget": 0}).encode(), 400, "tale_budget"),
    (json.dumps({"model": "seven", "messages": MESSAGES, "tale_budget": "lots"}).encode(), 400, "tale_budget"),
    (json.dumps({"model": "seven", "messages": MESSAGES[:1], "tale_budget": 9}).encode(), 400, "tale_budget"),
    (json.dumps({"model": "seven", "messages": MESSAGES, "tale_enforce": True}).encode(), 400, "tale_enforce"),
    (json.dumps({"model": "seven", "messages": MESSAGES, "tale_budget": 9, "tale_enforce": True}).encode(), 422,
     "tale_enforce"),
    (json.dumps({"model": 7, "messages": MESSAGES, "tale_budget": 9}).encode(), 400, "model"),
    (json.dumps({"model": "seven", "messages": MESSAGES, "max_tokens": 0, "tale_budget": 9}).encode(), 400,
     "max_tokens"),
    # checked for every request, TALE or not: text that is not valid Unicode never reaches the engine
    (b'{"model": "seven", "messages": [{"role": "user", "content": "\\ud800"}]}', 400, "messages[0].content"),
    (b'{"model": "seven", "messages": [{"role": "user", "content": "\xff"}]}', 400, "messages[0].content"),
])
def test_client_input_errors_are_4xx_from_the_front(engine, front, body, status, param):
    url = front(engine)
    r = httpx.post(f"{url}/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == param
    good = client(url).chat.completions.create(model="seven", messages=MESSAGES, max_tokens=1)
    assert good.choices[0].message.content == " 7"


def test_browser_guards_hold_on_the_front(engine, front):
    url = front(engine, allowed_hosts=["127.0.0.1"])
    ask = {"model": "seven", "messages": MESSAGES, "max_tokens": 1}
    r = httpx.post(f"{url}/v1/chat/completions", content=json.dumps(ask), headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
    r = httpx.post(f"{url}/v1/chat/completions", json=ask, headers={"Origin": "https://evil.example"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "origin_not_allowed"
    r = httpx.post(f"{url}/v1/chat/completions", json=ask, headers={"Host": "rebound.example"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "host_not_allowed"
    assert httpx.post(f"{url}/v1/chat/completions", json=ask).status_code == 200


def test_the_fronts_own_key_and_body_limit(engine, front):
    url = front(engine, api_key="front-key", max_body_bytes=100)
    r = httpx.post(f"{url}/v1/chat/completions", json={"model": "seven", "messages": MESSAGES})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = httpx.post(f"{url}/v1/chat/completions", json={"model": "seven", "messages": MESSAGES * 10},
                   headers={"Authorization": "Bearer front-key"})
    assert r.status_code == 413


def test_an_engine_error_that_is_not_json_is_quoted_in_the_error_object():
    error = UpstreamError(502, b"<html>Bad Gateway</html>")
    assert error.status == 502
    assert error.body()["error"]["code"] == "upstream_error" and "<html>Bad Gateway</html>" in error.message
    passed = UpstreamError(429, b'{"error": {"message": "slow down", "type": "rate_limit", "code": null}}')
    assert passed.body() == {"error": {"message": "slow down", "type": "rate_limit", "code": None}}


@pytest.mark.parametrize(("given", "base"), [
    ("http://gpu:8000", "http://gpu:8000/v1"),
    ("http://gpu:8000/", "http://gpu:8000/v1"),
    ("http://gpu:8000/v1/", "http://gpu:8000/v1"),
    ("https://api.example.com/openai/v1", "https://api.example.com/openai/v1"),
])
def test_upstream_base_url(given, base):
    assert upstream_base_url(given) == base


def test_bad_front_settings_are_refused_naming_the_argument():
    with pytest.raises(ValueError, match="thinking"):
        create_upstream_app("http://gpu:8000", thinking=True)
    with pytest.raises(ValueError, match="thinking='vlm'"):
        create_upstream_app("http://gpu:8000", thinking="vlm")
    with pytest.raises(ValueError, match="answer_reserve"):
        create_upstream_app("http://gpu:8000", answer_reserve=0)
    with pytest.raises(ValueError, match="timeout"):
        create_upstream_app("http://gpu:8000", timeout=0)
    with pytest.raises(ValueError, match="upstream_api_key"):
        create_upstream_app("http://gpu:8000", upstream_api_key=" ")
    with pytest.raises(ValueError, match="api_key"):
        create_upstream_app("http://gpu:8000", api_key="")


@pytest.mark.parametrize("bad", ["gpu:8000", "ftp://gpu/v1", "http://", "http://gpu:8000/v1?x=1"])
def test_a_bad_upstream_url_is_refused_naming_the_argument(bad):
    with pytest.raises(ValueError, match="upstream_url"):
        upstream_base_url(bad)


def serve_args(*argv: str) -> argparse.Namespace:
    root = argparse.ArgumentParser(prog="tale")
    add_serve_parser(root.add_subparsers(dest="command", required=True))
    return root.parse_args(["serve", *argv])


def test_tale_serve_upstream_runs_the_front(engine, monkeypatch):
    import uvicorn

    seen: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: seen.update(app=app, **kwargs))
    monkeypatch.setenv(UPSTREAM_API_KEY_ENV, ENGINE_KEY)
    args = serve_args("--upstream", engine, "--upstream-timeout", "30", "--estimator", "learned", "--port", "8123",
                      "--allow-origin", "https://app.example")
    assert args.handler(args) == 0 and seen["port"] == 8123 and seen["host"] == "127.0.0.1"
    running = Running(seen["app"])
    try:
        r = client(running.url).chat.completions.create(model="seven", messages=MESSAGES, max_tokens=300,
                                                        extra_body={"tale_budget": "auto"})
        assert r.model_extra["tale"]["estimator"].startswith("learned")  # --estimator reaches the front
        ask = {"model": "seven", "messages": MESSAGES, "max_tokens": 1}
        allowed = httpx.post(f"{running.url}/v1/chat/completions", json=ask, headers={"Origin": "https://app.example"})
        refused = httpx.post(f"{running.url}/v1/chat/completions", json=ask, headers={"Origin": "https://x.example"})
        assert (allowed.status_code, refused.status_code) == (200, 403)  # the browser guards: --allow-origin
        rebound = httpx.post(f"{running.url}/v1/chat/completions", json=ask, headers={"Host": "rebound.example"})
        assert rebound.status_code == 403  # bound to loopback: the loopback host names only
    finally:
        running.stop()


@pytest.mark.parametrize(("argv", "named"), [(["--model", "x"], "--model"), (["--enforce"], "--enforce"),
                                             (["--upstream-thinking", "vlm"], None)])
def test_tale_serve_upstream_refuses_local_model_options(argv, named, capsys):
    if named is None:
        with pytest.raises(SystemExit):
            serve_args("--upstream", "http://gpu:8000", *argv)
        assert "--upstream-thinking" in capsys.readouterr().err
        return
    args = serve_args("--upstream", "http://gpu:8000", *argv)
    with pytest.raises(ValueError, match=named):
        args.handler(args)
