"""`OpenAIGenerator`: request translation and usage on a mocked transport, then the real SDK against a
running `tale serve` (tiny scripted models, loopback only)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import pytest

openai = pytest.importorskip("openai")
httpx2 = pytest.importorskip("httpx2")

from tale_integrations.backends.openai import OpenAIGenerator, uses_max_completion_tokens  # noqa: E402
from tale_integrations.core.generation import Generator  # noqa: E402
from tale_integrations.core.tokens import counter_for  # noqa: E402

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 3?"}]
USAGE = {
    "prompt_tokens": 20, "completion_tokens": 7, "total_tokens": 27,
    "prompt_tokens_details": {"cached_tokens": 16}, "completion_tokens_details": {"reasoning_tokens": 3},
}


def completion(content: str = "5", *, finish: str = "stop", usage: Any = USAGE, model: str = "gpt-4o-mini") -> dict:
    body = {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}]}
    if usage is not None:
        body["usage"] = usage
    return body


class Mock:
    """A fake API: records every request body and answers with ``respond(body) -> (status, json)``."""

    def __init__(self, respond=None, *, delay: float = 0.0, overlap: int = 0) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.respond = respond or (lambda body: (200, completion(model=body["model"])))
        self.delay = delay
        # Hold each request (up to 5 s) until this many have been in flight at once, so that a
        # concurrency test does not depend on how fast a loaded machine starts the next request.
        self.overlap = overlap
        self.in_flight = self.peak = 0
        self.lock = threading.Lock()

    def _answer(self, request: Any) -> Any:
        body = json.loads(request.content)
        self.bodies.append(body)
        status, payload = self.respond(body)
        return httpx2.Response(status, json=payload, headers={"retry-after-ms": "1"})

    def handler(self, request: Any) -> Any:
        with self.lock:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        try:
            deadline = time.monotonic() + 5
            while self.peak < self.overlap and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(self.delay)
            return self._answer(request)
        finally:
            with self.lock:
                self.in_flight -= 1

    async def ahandler(self, request: Any) -> Any:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            deadline = time.monotonic() + 5
            while self.peak < self.overlap and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            await asyncio.sleep(self.delay)
            return self._answer(request)
        finally:
            self.in_flight -= 1

    def generator(self, model: str = "gpt-4o-mini", *, max_retries: int = 0, **kwargs: Any) -> OpenAIGenerator:
        base = {"base_url": "http://mock.invalid/v1", "api_key": "k", "max_retries": max_retries}
        sync = openai.OpenAI(http_client=httpx2.Client(transport=httpx2.MockTransport(self.handler)), **base)
        asynchronous = openai.AsyncOpenAI(
            http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(self.ahandler)), **base)
        return OpenAIGenerator(model, client=sync, async_client=asynchronous, **kwargs)


@pytest.mark.parametrize(("model", "expected"), [
    ("gpt-4o-mini", False), ("gpt-4.1", False), ("gpt-3.5-turbo", False), ("llama-3.1-8b", False),
    ("o1", True), ("o3-mini", True), ("o4-mini-2025-04-16", True), ("gpt-5", True), ("gpt-5-mini", True),
    ("openai/o3", True), ("ft:gpt-5-mini:org::id", True), ("GPT-5", True), ("omni-model", False),
])
def test_max_completion_tokens_name_rule(model, expected):
    assert uses_max_completion_tokens(model) is expected


def test_request_carries_settings_and_the_right_token_parameter():
    mock = Mock()
    mock.generator("gpt-4o-mini", temperature=0.3, seed=7).generate([MESSAGES], max_tokens=50, stop=["\n\n"])
    mock.generator("o3-mini").generate([MESSAGES], max_tokens=50)
    mock.generator("gpt-4o-mini", max_tokens_param="max_completion_tokens").generate([MESSAGES], max_tokens=9)
    mock.generator("gpt-4o-mini", extra_body={"tale_budget": "auto"}).generate([MESSAGES])
    first, second, third, fourth = mock.bodies
    assert first == {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 50, "temperature": 0.3,
                     "seed": 7, "stop": ["\n\n"]}
    assert second["max_completion_tokens"] == 50 and "max_tokens" not in second
    assert third["max_completion_tokens"] == 9
    assert fourth == {"model": "gpt-4o-mini", "messages": MESSAGES, "tale_budget": "auto"}


def test_paper_preset():
    mock = Mock()
    clients = mock.generator()
    gen = OpenAIGenerator.paper("gpt-4o-mini", client=clients.client, async_client=clients.async_client)
    assert (gen.temperature, gen.seed, gen.max_tokens) == (0.1, 1024, 1024)
    gen.generate([MESSAGES])
    assert mock.bodies[-1]["temperature"] == 0.1 and mock.bodies[-1]["seed"] == 1024
    assert mock.bodies[-1]["max_tokens"] == 1024
    assert OpenAIGenerator.paper("o3-mini", api_key="k", max_tokens=2048).max_tokens == 2048


def test_reported_usage_is_kept_with_cached_and_reasoning_tokens():
    [g] = Mock().generator().generate([MESSAGES])
    assert g.text == "5" and g.model == "gpt-4o-mini" and g.finish_reason == "stop"
    assert (g.usage.input_tokens, g.usage.output_tokens) == (20, 7)
    assert (g.usage.cached_input_tokens, g.usage.reasoning_tokens) == (16, 3)
    assert g.usage.counter == "reported"


def test_missing_usage_is_counted_and_labelled():
    mock = Mock(lambda body: (200, completion("The answer is 5.", usage=None)))
    [g] = mock.generator("gpt-4o-mini").generate([MESSAGES])
    counter = counter_for("gpt-4o-mini")
    assert g.usage.counter == counter.name == "tiktoken:o200k_base"
    assert g.usage.output_tokens == counter.count("The answer is 5.") > 0
    assert g.usage.input_tokens == sum(counter.count(m["content"]) for m in MESSAGES) + 3 * len(MESSAGES) + 3


@pytest.mark.parametrize(("reason", "expected"), [("length", "length"), ("stop", "stop"),
                                                  ("content_filter", "stop"), ("tool_calls", "stop")])
def test_finish_reasons(reason, expected):
    [g] = Mock(lambda body: (200, completion(finish=reason))).generator().generate([MESSAGES])
    assert g.finish_reason == expected


def test_n_above_one_is_refused_at_construction():
    with pytest.raises(ValueError, match=r"\bn must be 1"):
        OpenAIGenerator("gpt-4o-mini", api_key="k", n=2)


@pytest.mark.parametrize("kwargs", [{"max_tokens": 0}, {"temperature": 3}, {"max_concurrency": 0},
                                    {"max_retries": -1}, {"max_tokens_param": "tokens"}, {"seed": "x"}])
def test_bad_settings_fail_early(kwargs):
    with pytest.raises(ValueError):
        OpenAIGenerator("gpt-4o-mini", api_key="k", **kwargs)


@pytest.mark.parametrize(("settings", "name"), [({"max_tokens": 0}, "max_tokens"), ({"temperature": 3}, "temperature"),
                                              ({"stop": "\n"}, "stop")])
def test_bad_call_settings_fail_before_any_request(settings, name):
    mock = Mock()
    with pytest.raises((TypeError, ValueError), match=name):
        mock.generator().generate([MESSAGES], **settings)
    with pytest.raises((TypeError, ValueError), match=name):
        asyncio.run(mock.generator().agenerate([MESSAGES], **settings))
    assert mock.bodies == []


def test_clients_get_timeout_retries_and_the_environment(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "from-env")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    gen = OpenAIGenerator("gpt-4o-mini", timeout=5.0, max_retries=4)
    assert isinstance(gen, Generator)
    assert str(gen.client.base_url).startswith("http://127.0.0.1:9/v1")
    assert gen.client.api_key == gen.async_client.api_key == "from-env"
    assert gen.client.timeout == gen.async_client.timeout == 5.0
    assert gen.client.max_retries == gen.async_client.max_retries == 4
    twin = OpenAIGenerator("gpt-4o-mini", client=gen.client)
    assert twin.client is gen.client and str(twin.async_client.base_url) == str(gen.client.base_url)


def test_batches_run_concurrently_but_bounded_and_in_order():
    mock = Mock(lambda body: (200, completion(body["messages"][-1]["content"])), delay=0.05, overlap=2)
    gen = mock.generator(max_concurrency=3)
    out = gen.generate([[{"role": "user", "content": str(i)}] for i in range(9)])
    assert [g.text for g in out] == [str(i) for i in range(9)]
    assert 1 < mock.peak <= 3


async def test_agenerate_is_concurrent_under_the_semaphore():
    mock = Mock(lambda body: (200, completion(body["messages"][-1]["content"])), delay=0.05, overlap=2)
    gen = mock.generator(max_concurrency=4)
    out = await gen.agenerate([[{"role": "user", "content": str(i)}] for i in range(10)], max_tokens=3)
    assert [g.text for g in out] == [str(i) for i in range(10)]
    assert 1 < mock.peak <= 4
    assert all(b["max_tokens"] == 3 for b in mock.bodies)


def test_sdk_errors_propagate_after_bounded_retries():
    mock = Mock(lambda body: (500, {"error": {"message": "down", "type": "server_error"}}))
    with pytest.raises(openai.InternalServerError):
        mock.generator(max_retries=2).generate([MESSAGES])
    assert len(mock.bodies) == 3  # one try and two retries, then the error reaches the caller
    bad = Mock(lambda body: (400, {"error": {"message": "nope", "type": "invalid_request_error"}}))
    with pytest.raises(openai.BadRequestError):
        bad.generator(max_retries=2).generate([MESSAGES])
    # 400 is not retried. (One prompt: with two, the first error may stop the second before it is sent.)
    assert len(bad.bodies) == 1


async def test_async_errors_propagate():
    mock = Mock(lambda body: (404, {"error": {"message": "no model", "type": "invalid_request_error"}}))
    with pytest.raises(openai.NotFoundError):
        await mock.generator().agenerate([MESSAGES, MESSAGES])


# -- against a running `tale serve` ---------------------------------------------------------------

@pytest.fixture()
def serve():
    """``serve(generator, **create_app_kwargs) -> base URL``: `tale serve` under uvicorn on a free
    loopback port in a thread (the same harness as tests/serve/conftest.py, which this folder cannot see)."""
    pytest.importorskip("fastapi")
    uvicorn = pytest.importorskip("uvicorn")
    pytest.importorskip("torch")
    from tale_integrations.serve import create_app

    servers: list[tuple[Any, threading.Thread]] = []

    def start(generator: Any, **kwargs: Any) -> str:
        server = uvicorn.Server(uvicorn.Config(create_app(generator, **kwargs), host="127.0.0.1", port=0,
                                               log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        deadline = time.monotonic() + 60
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
            time.sleep(0.01)
        return f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=60)


@pytest.fixture()
def served(serve, scripted_generator):
    hf = scripted_generator(" 7", model_name="seven")
    return hf, serve(hf, batch_window_ms=30)


def test_generate_and_agenerate_against_tale_serve(served):
    hf, url = served
    gen = OpenAIGenerator("seven", base_url=f"{url}/v1", api_key="unused", max_retries=0)
    prompts = [MESSAGES, [{"role": "user", "content": "another question"}]]
    out = gen.generate(prompts, max_tokens=5)
    assert [g.text for g in out] == [" 7" * 5] * 2
    assert [g.usage.input_tokens for g in out] == [len(hf.encode_chat(p)) for p in prompts]
    assert all(g.usage.output_tokens == 5 and g.usage.counter == "reported" for g in out)
    assert all(g.finish_reason == "length" and g.model == "seven" for g in out)
    again = asyncio.run(gen.agenerate(prompts, max_tokens=3))
    assert [g.text for g in again] == [" 7" * 3] * 2
    assert [g.usage.input_tokens for g in again] == [g.usage.input_tokens for g in out]


def test_tale_pipeline_over_openai_generator_and_tale_serve(serve, scripted_generator):
    from tale_integrations import TalePipeline

    url = serve(scripted_generator("[[40]]", model_name="forty"))
    gen = OpenAIGenerator("forty", base_url=f"{url}/v1", api_key="unused", max_retries=0)
    result = TalePipeline(gen, max_tokens=12).invoke("What is 2 + 3?")
    assert result.budget.raw == 40 and result.budget.tokens == 12  # capped by max_tokens
    assert result.answer == "40" and result.usage.counter == "reported"
    assert result.estimator_usage.output_tokens == 64 and result.usage.output_tokens == 12


def test_missing_openai_names_the_extra():
    import subprocess
    import sys

    code = ("import sys; sys.modules['openai'] = None\n"
            "try:\n    import tale_integrations.backends.openai\nexcept ImportError as exc:\n    print(exc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    assert 'pip install "tale-integrations[openai]"' in out
