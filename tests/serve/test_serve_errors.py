"""Every bad input gets its 4xx and the OpenAI error object, never a 500 or a hung connection.

Raw httpx requests, so malformed JSON, odd bytes and oversized bodies reach the server as sent.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("torch")

LIMIT = 4096
MODEL = "tiny-llama"
OK_MESSAGES = [{"role": "user", "content": "hi"}]


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": OK_MESSAGES, "max_tokens": 2, **fields}


def completion(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": "hi", "max_tokens": 2, **fields}


def without(body: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != key}


CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"

# (id, path, body: dict for JSON or bytes as sent, status, code, param)
CASES = [
    # 400: malformed requests and values
    ("malformed-json", CHAT, b'{"model": "tiny-llama", "messages": [', 400, "invalid_json", None),
    ("not-an-object", CHAT, b"[1, 2, 3]", 400, "invalid_json", None),
    ("nan-literal", CHAT, b'{"model": "tiny-llama", "messages": [], "temperature": NaN}', 400, "invalid_json", None),
    ("invalid-utf8", CHAT, b'{"model": "\xff\xfe"}', 400, "invalid_json", None),
    ("deep-nesting", CHAT, b"[" * 4000, 400, "invalid_json", None),
    ("over-the-limit", CHAT, b"[" * 100_000, 413, "request_too_large", None),
    ("missing-model", CHAT, without(chat(), "model"), 400, "missing_required_parameter", "model"),
    ("model-not-string", CHAT, chat(model=7), 400, "invalid_value", "model"),
    ("missing-messages", CHAT, without(chat(), "messages"), 400, "missing_required_parameter", "messages"),
    ("empty-messages", CHAT, chat(messages=[]), 400, "invalid_value", "messages"),
    ("bad-role", CHAT, chat(messages=[{"role": "robot", "content": "hi"}]), 400, "invalid_value", "messages[0].role"),
    ("content-not-text", CHAT, chat(messages=[{"role": "user", "content": 5}]), 400, "invalid_value",
     "messages[0].content"),
    ("all-empty", CHAT, chat(messages=[{"role": "user", "content": "  "}]), 400, "invalid_value", "messages"),
    ("temperature-range", CHAT, chat(temperature=3), 400, "invalid_value", "temperature"),
    ("temperature-type", CHAT, chat(temperature="hot"), 400, "invalid_value", "temperature"),
    ("max-tokens-zero", CHAT, chat(max_tokens=0), 400, "invalid_value", "max_tokens"),
    ("max-tokens-string", CHAT, chat(max_tokens="5"), 400, "invalid_value", "max_tokens"),
    ("max-completion-tokens-bool", CHAT, chat(max_completion_tokens=True), 400, "invalid_value",
     "max_completion_tokens"),
    ("too-many-stops", CHAT, chat(stop=["a", "b", "c", "d", "e"]), 400, "invalid_value", "stop"),
    ("empty-stop", CHAT, chat(stop=[""]), 400, "invalid_value", "stop"),
    ("stream-not-bool", CHAT, chat(stream="yes"), 400, "invalid_value", "stream"),
    ("stream-options-without-stream", CHAT, chat(stream_options={"include_usage": True}), 400, "invalid_value",
     "stream_options"),
    ("tale-budget-zero", CHAT, chat(tale_budget=0), 400, "invalid_value", "tale_budget"),
    ("tale-budget-word", CHAT, chat(tale_budget="lots"), 400, "invalid_value", "tale_budget"),
    ("tale-budget-bool", CHAT, chat(tale_budget=True), 400, "invalid_value", "tale_budget"),
    ("tale-enforce-alone", CHAT, chat(tale_enforce=True), 400, "invalid_value", "tale_enforce"),
    ("tale-without-user", CHAT, chat(messages=[{"role": "system", "content": "x"}], tale_budget=9), 400,
     "invalid_value", "tale_budget"),
    ("unknown-parameter", CHAT, chat(frobnicate=1), 400, "unknown_parameter", "frobnicate"),
    ("context-too-long", CHAT, chat(messages=[{"role": "user", "content": "step by step " * 200}]), 400,
     "context_length_exceeded", "messages"),
    ("output-does-not-fit", CHAT, chat(max_tokens=250), 400, "context_length_exceeded", "max_tokens"),
    ("completion-missing-prompt", COMPLETIONS, without(completion(), "prompt"), 400, "missing_required_parameter",
     "prompt"),
    ("completion-empty-prompt", COMPLETIONS, completion(prompt=" "), 400, "invalid_value", "prompt"),
    ("completion-too-long", COMPLETIONS, completion(prompt="step by step " * 200), 400, "context_length_exceeded",
     "messages"),
    # 404: unknown model
    ("unknown-model", CHAT, chat(model="gpt-4o"), 404, "model_not_found", "model"),
    ("unknown-model-completions", COMPLETIONS, completion(model="gpt-4o"), 404, "model_not_found", "model"),
    # 422: well-formed but unsupported
    ("n-2", CHAT, chat(n=2), 422, "unsupported_parameter", "n"),
    ("tools", CHAT, chat(tools=[{"type": "function", "function": {"name": "f"}}]), 422, "unsupported_parameter",
     "tools"),
    ("tool-choice", CHAT, chat(tool_choice="auto"), 422, "unsupported_parameter", "tool_choice"),
    ("logprobs", CHAT, chat(logprobs=True), 422, "unsupported_parameter", "logprobs"),
    ("top-logprobs", CHAT, chat(top_logprobs=3), 422, "unsupported_parameter", "top_logprobs"),
    ("json-schema", CHAT, chat(response_format={"type": "json_schema", "json_schema": {"name": "x"}}), 422,
     "unsupported_parameter", "response_format"),
    ("json-object", CHAT, chat(response_format={"type": "json_object"}), 422, "unsupported_parameter",
     "response_format"),
    ("top-p", CHAT, chat(top_p=0.5), 422, "unsupported_parameter", "top_p"),
    ("presence-penalty", CHAT, chat(presence_penalty=0.5), 422, "unsupported_parameter", "presence_penalty"),
    ("image-part", CHAT, chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]), 422,
     "unsupported_parameter", "messages[0].content"),
    ("tool-message", CHAT, chat(messages=[{"role": "tool", "content": "x", "tool_call_id": "1"}]), 422,
     "unsupported_parameter", "messages[0]"),
    ("enforce-without-enforcer", CHAT, chat(tale_budget=9, tale_enforce=True), 422, "unsupported_parameter",
     "tale_enforce"),
    ("completion-n-2", COMPLETIONS, completion(n=2), 422, "unsupported_parameter", "n"),
    ("completion-echo", COMPLETIONS, completion(echo=True), 422, "unsupported_parameter", "echo"),
    ("completion-best-of", COMPLETIONS, completion(best_of=3), 422, "unsupported_parameter", "best_of"),
    ("completion-many-prompts", COMPLETIONS, completion(prompt=["a", "b"]), 422, "unsupported_parameter", "prompt"),
    ("completion-token-ids", COMPLETIONS, completion(prompt=[1, 2, 3]), 422, "unsupported_parameter", "prompt"),
]


@pytest.fixture(scope="module")
def url(serve_module, tiny_model, tiny_tokenizer) -> str:
    from tale_integrations.backends.hf import HFGenerator

    generator = HFGenerator.from_model(tiny_model, tiny_tokenizer, model_name=MODEL)
    return serve_module(generator, max_body_bytes=LIMIT)


@pytest.fixture(scope="module")
def http(url) -> httpx.Client:
    with httpx.Client(base_url=url, timeout=30) as c:
        yield c


def assert_error(response: httpx.Response, status: int, code: str | None, param: str | None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == code
    assert error["param"] == param


@pytest.mark.parametrize(("path", "body", "status", "code", "param"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_table(http, path, body, status, code, param):
    if isinstance(body, bytes):
        response = http.post(path, content=body, headers={"content-type": "application/json"})
    else:
        response = http.post(path, json=body)
    assert_error(response, status, code, param)


@pytest.mark.parametrize("body", [
    chat(n=1, tools=[], logprobs=False, response_format={"type": "text"}, top_p=1, presence_penalty=0),
    chat(seed=5, user="me", metadata={"a": "b"}, store=False, temperature=None, stop=None),
    chat(messages=[{"role": "developer", "content": "be brief"}, {"role": "user", "content": [{"type": "text",
                                                                                              "text": "hi"}]}]),
    chat(max_completion_tokens=2, max_tokens=None),
], ids=["defaults-of-unsupported", "accepted-no-effect", "developer-role-and-parts", "max-completion-tokens"])
def test_default_values_of_unsupported_parameters_are_accepted(http, body):
    response = http.post(CHAT, json=body)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] <= 2


def test_body_over_the_limit_by_content_length(http):
    body = b'{"model": "tiny-llama", "messages": [{"role": "user", "content": "' + b"x" * LIMIT + b'"}]}'
    assert_error(http.post(CHAT, content=body), 413, "request_too_large", None)


def test_body_over_the_limit_while_reading_a_chunked_upload(http):
    def chunks():
        yield b'{"model": "tiny-llama", "messages": [{"role": "user", "content": "'
        for _ in range(8):
            yield b"x" * 1000
        yield b'"}]}'

    response = http.post(CHAT, content=chunks())  # no Content-Length: transfer-encoding chunked
    assert_error(response, 413, "request_too_large", None)


def test_routes_and_methods(http):
    assert_error(http.get("/v1/nothing-here"), 404, "not_found", None)
    assert_error(http.get(CHAT), 405, "method_not_allowed", None)
    assert_error(http.get("/v1/models/gpt-4o"), 404, "model_not_found", "model")


def test_missing_or_wrong_api_key_is_401(serve, tiny_generator):
    url = serve(tiny_generator, api_key="s3cret")
    wrong = ({}, {"Authorization": "Bearer nope"}, {"Authorization": "s3cret"}, {"Authorization": "Basic s3cret"})
    for headers in wrong:
        assert_error(httpx.post(f"{url}{CHAT}", json=chat(model="tiny-llama"), headers=headers), 401,
                     "invalid_api_key", None)
    ok = httpx.post(f"{url}{CHAT}", json=chat(model="tiny-llama"), headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200


def test_a_server_bug_is_a_500_with_the_error_object(serve, tiny_generator):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    tiny_generator.generate = broken
    response = httpx.post(f"{serve(tiny_generator)}{CHAT}", json=chat(model="tiny-llama"))
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "server_error"
    assert "boom" in response.json()["error"]["message"]
