"""Every bad input gets its 4xx and the OpenAI error object, never a 500 or a hung connection; a good
request is still answered afterwards. The browser guards (JSON only, no foreign Origin, the Host
allow-list) are in the same table.

Raw httpx requests, so malformed JSON, odd bytes, lone surrogates and oversized bodies reach the
server as sent.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("torch")

LIMIT = 4096
MODEL = "tiny-llama"
OK_MESSAGES = [{"role": "user", "content": "hi"}]
TOKENS_LIMIT = 220  # the server's --max-tokens-limit (its context window is 256)
ALLOWED_ORIGIN = "http://allowed.example"
#: The tiny chat template, refusing two turns of one role in a row (as many models' templates do).
STRICT_TEMPLATE = (
    "{% for m in messages %}{% if loop.index0 > 0 and m['role'] == messages[loop.index0 - 1]['role'] %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": OK_MESSAGES, "max_tokens": 2, **fields}


USER = {"role": "user", "content": "hi"}


def fn(name: str, parameters: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """An OpenAI function tool."""
    return {"type": "function", "function": {"name": name, "parameters": parameters or {"type": "object"}, **extra}}


def completion(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": "hi", "max_tokens": 2, **fields}


def without(body: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != key}


def escaped(body: dict[str, Any]) -> bytes:
    """The body as JSON with every non-ASCII character escaped (a lone surrogate as ``\\ud800``), as
    a client that does not check its strings sends it."""
    return json.dumps(body, ensure_ascii=True).encode()


def raw_content(text: bytes) -> bytes:
    """A chat body whose message content is ``text``, bytes as given (not necessarily UTF-8)."""
    return b'{"model": "tiny-llama", "max_tokens": 2, "messages": [{"role": "user", "content": "' + text + b'"}]}'


JSON = {"content-type": "application/json"}


CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"

# (id, path, body: dict for JSON or bytes as sent, status, code, param[, headers])
CASES = [
    # 400: malformed requests and values
    ("malformed-json", CHAT, b'{"model": "tiny-llama", "messages": [', 400, "invalid_json", None),
    ("not-an-object", CHAT, b"[1, 2, 3]", 400, "invalid_json", None),
    ("nan-literal", CHAT, b'{"model": "tiny-llama", "messages": [], "temperature": NaN}', 400, "invalid_json", None),
    ("invalid-utf8", CHAT, b'{"model": "\xff\xfe"}', 400, "invalid_unicode", "model"),
    ("invalid-utf8-outside-strings", CHAT, b'{"model": "tiny-llama"\xff}', 400, "invalid_json", None),
    ("utf8-bom", CHAT, b"\xef\xbb\xbf" + escaped(chat()), 400, "invalid_json", None),
    # text that is not valid Unicode, wherever it is: named by field
    ("surrogate-in-model", CHAT, escaped(chat(model="\ud800")), 400, "invalid_unicode", "model"),
    ("surrogate-in-content", CHAT, escaped(chat(messages=[{"role": "user", "content": "a\udfffb"}])), 400,
     "invalid_unicode", "messages[0].content"),
    ("surrogate-in-field-name", CHAT, escaped({**chat(), "\ud800": 1}), 400, "invalid_unicode", "\\ud800"),
    ("surrogate-in-message-field-name", CHAT,
     escaped(chat(messages=[{"role": "user", "content": "hi", "\udc00x": "y"}])), 400, "invalid_unicode",
     "messages[0]"),
    ("surrogate-in-content-part", CHAT,
     escaped(chat(messages=[{"role": "user", "content": [{"type": "text", "text": "\ud83d"}]}])), 400,
     "invalid_unicode", "messages[0].content[0].text"),
    ("surrogate-in-stop", CHAT, escaped(chat(stop=["ok", "\ud800"])), 400, "invalid_unicode", "stop[1]"),
    ("surrogate-in-unknown-field", CHAT, escaped(chat(user="\ud800")), 400, "invalid_unicode", "user"),
    ("surrogate-in-prompt", COMPLETIONS, escaped(completion(prompt="\udbff")), 400, "invalid_unicode", "prompt"),
    ("invalid-utf8-in-content", CHAT, raw_content(b"caf\xe9"), 400, "invalid_unicode", "messages[0].content"),
    ("utf8-encoded-surrogate-in-content", CHAT, raw_content(b"\xed\xa0\x80"), 400, "invalid_unicode",
     "messages[0].content"),
    ("overlong-utf8-in-content", CHAT, raw_content(b"\xc0\xaf"), 400, "invalid_unicode", "messages[0].content"),
    ("chat-template-refuses", CHAT, chat(messages=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]),
     400, "chat_template_error", "messages"),  # the template's own message is passed on (below)
    ("stop-too-long", CHAT, chat(stop=["x" * 257]), 400, "invalid_value", "stop"),
    ("max-tokens-over-the-limit", CHAT, chat(max_tokens=TOKENS_LIMIT + 1), 400, "invalid_value", "max_tokens"),
    ("completion-max-tokens-over-the-limit", COMPLETIONS, completion(max_tokens=TOKENS_LIMIT + 1), 400,
     "invalid_value", "max_tokens"),
    # 415: not JSON (the request a browser can send cross-site without a preflight)
    ("text-plain", CHAT, escaped(chat()), 415, "unsupported_media_type", "Content-Type",
     {"content-type": "text/plain"}),
    ("form-encoded", CHAT, b"model=tiny-llama", 415, "unsupported_media_type", "Content-Type",
     {"content-type": "application/x-www-form-urlencoded"}),
    ("no-content-type", CHAT, escaped(chat()), 415, "unsupported_media_type", "Content-Type", {"content-type": ""}),
    ("json-in-latin-1", CHAT, escaped(chat()), 415, "unsupported_media_type", "Content-Type",
     {"content-type": "application/json; charset=latin-1"}),
    # 403: a web page's request (Origin) not allowed, a Host outside the loopback allow-list (DNS rebinding)
    ("foreign-origin", CHAT, chat(), 403, "origin_not_allowed", "Origin", {"origin": "http://evil.example"}),
    ("foreign-origin-get", "/v1/models", None, 403, "origin_not_allowed", "Origin",
     {"origin": "http://evil.example"}),
    ("null-origin", CHAT, chat(), 403, "origin_not_allowed", "Origin", {"origin": "null"}),
    ("rebound-host", CHAT, chat(), 403, "host_not_allowed", "Host", {"host": "evil.example"}),
    ("rebound-host-health", "/health", None, 403, "host_not_allowed", "Host", {"host": "evil.example:8000"}),
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
    # tools, structured output and thinking
    ("tools-not-list", CHAT, chat(tools="add"), 400, "invalid_value", "tools"),
    ("tool-not-json-schema", CHAT, chat(tools=[fn("f", {"type": "objekt"})]), 400, "invalid_value", "tools"),
    ("tool-without-name", CHAT, chat(tools=[{"type": "function", "function": {"parameters": {}}}]), 400,
     "invalid_value", "tools"),
    ("tool-choice-missing-tool", CHAT, chat(tools=[fn("f")], tool_choice={"type": "function", "function": {
        "name": "g"}}), 400, "invalid_value", "tool_choice"),
    ("tool-choice-without-tools", CHAT, chat(tool_choice="required"), 400, "invalid_value", "tool_choice"),
    ("strict-tool-uncompilable", CHAT, chat(tools=[fn("f", {"type": "object", "properties": {"xs": {
        "type": "array", "uniqueItems": True}}}, strict=True)]), 400, "invalid_value", "tools[0].function.parameters"),
    ("required-tool-uncompilable", CHAT, chat(tools=[fn("f", {"type": "object", "properties": {"xs": {
        "type": "array", "uniqueItems": True}}})], tool_choice="required"), 400, "invalid_value",
     "tools[0].function.parameters"),
    ("response-format-kind", CHAT, chat(response_format={"type": "yaml"}), 400, "invalid_value", "response_format"),
    ("json-schema-without-schema", CHAT, chat(response_format={"type": "json_schema", "json_schema": {"name": "x"}}),
     400, "invalid_value", "response_format.json_schema"),
    ("json-schema-not-schema", CHAT, chat(response_format={"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"required": "a"}}}), 400, "invalid_value", "response_format.json_schema.schema"),
    ("json-schema-uncompilable", CHAT, chat(response_format={"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "array", "uniqueItems": True}}}), 400, "invalid_value",
     "response_format.json_schema.schema"),
    ("tool-result-unmatched", CHAT, chat(messages=[{"role": "tool", "content": "x", "tool_call_id": "1"}]), 400,
     "invalid_value", "messages[0].tool_call_id"),
    ("tool-call-arguments", CHAT, chat(messages=[USER, {"role": "assistant", "tool_calls": [{
        "id": "c1", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]), 400,
     "invalid_value", "messages[1].tool_calls[0].function.arguments"),
    ("reasoning-effort-word", CHAT, chat(reasoning_effort="lots"), 400, "invalid_value", "reasoning_effort"),
    ("thinking-budget-negative", CHAT, chat(thinking_token_budget=-1), 400, "invalid_value", "thinking_token_budget"),
    ("thinking-both", CHAT, chat(reasoning_effort="low", thinking_token_budget=5), 400, "invalid_value",
     "thinking_token_budget"),
    ("thinking-and-tale", CHAT, chat(thinking_token_budget=5, tale_budget=9), 400, "invalid_value",
     "thinking_token_budget"),
    ("template-kwargs-own", CHAT, chat(chat_template_kwargs={"tokenize": False}), 400, "invalid_value",
     "chat_template_kwargs"),
    ("template-kwargs-list", CHAT, chat(chat_template_kwargs=["x"]), 400, "invalid_value", "chat_template_kwargs"),
    ("include-reasoning-word", CHAT, chat(include_reasoning="yes"), 400, "invalid_value", "include_reasoning"),
    # 404: unknown model
    ("unknown-model", CHAT, chat(model="gpt-4o"), 404, "model_not_found", "model"),
    ("unknown-model-completions", COMPLETIONS, completion(model="gpt-4o"), 404, "model_not_found", "model"),
    # 422: well-formed but unsupported
    ("n-2", CHAT, chat(n=2), 422, "unsupported_parameter", "n"),
    ("hosted-tool", CHAT, chat(tools=[{"type": "web_search"}]), 422, "unsupported_parameter", "tools[0].type"),
    ("tools-and-json", CHAT, chat(tools=[fn("f")], response_format={"type": "json_object"}), 422,
     "unsupported_parameter", "response_format"),
    ("legacy-functions", CHAT, chat(functions=[{"name": "f"}]), 422, "unsupported_parameter", "functions"),
    ("function-message", CHAT, chat(messages=[{"role": "function", "name": "f", "content": "x"}]), 422,
     "unsupported_parameter", "messages[0]"),
    ("reasoning-effort-no-thinking", CHAT, chat(reasoning_effort="low"), 422, "unsupported_parameter",
     "reasoning_effort"),
    ("thinking-budget-no-thinking", CHAT, chat(thinking_token_budget=5), 422, "unsupported_parameter",
     "thinking_token_budget"),
    ("logprobs", CHAT, chat(logprobs=True), 422, "unsupported_parameter", "logprobs"),
    ("top-logprobs", CHAT, chat(top_logprobs=3), 422, "unsupported_parameter", "top_logprobs"),
    ("top-p", CHAT, chat(top_p=0.5), 422, "unsupported_parameter", "top_p"),
    ("presence-penalty", CHAT, chat(presence_penalty=0.5), 422, "unsupported_parameter", "presence_penalty"),
    ("image-part", CHAT, chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]), 422,
     "unsupported_parameter", "messages[0].content"),
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
    from tale_integrations.serve.cli import LOOPBACK_HOSTS

    generator = HFGenerator.from_model(tiny_model, tiny_tokenizer, model_name=MODEL, chat_template=STRICT_TEMPLATE)
    return serve_module(generator, max_body_bytes=LIMIT, max_tokens_limit=TOKENS_LIMIT, allowed_hosts=LOOPBACK_HOSTS,
                        allow_origins=[ALLOWED_ORIGIN])


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


TABLE = [pytest.param(*case[1:6], case[6] if len(case) > 6 else {}, id=case[0]) for case in CASES]


@pytest.mark.parametrize(("path", "body", "status", "code", "param", "headers"), TABLE)
def test_bad_input_table(http, path, body, status, code, param, headers):
    if body is None:
        response = http.get(path, headers=headers)
    elif isinstance(body, bytes):
        response = http.post(path, content=body, headers={**JSON, **headers})
    else:
        response = http.post(path, json=body, headers=headers)
    assert_error(response, status, code, param)
    assert response.headers["x-request-id"].startswith("req_")


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
    assert_error(http.post(CHAT, content=body, headers=JSON), 413, "request_too_large", None)


def test_body_over_the_limit_while_reading_a_chunked_upload(http):
    def chunks():
        yield b'{"model": "tiny-llama", "messages": [{"role": "user", "content": "'
        for _ in range(8):
            yield b"x" * 1000
        yield b'"}]}'

    response = http.post(CHAT, content=chunks(), headers=JSON)  # no Content-Length: transfer-encoding chunked
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


def test_a_server_bug_is_a_500_with_the_request_id_only(serve, scripted_generator, caplog):
    gen = scripted_generator(" 7", model_name="broken").load()

    def broken(*args, **kwargs):
        raise RuntimeError("boom: an internal detail")

    gen.model.forward = broken
    url = serve(gen)
    for body in (chat(model="broken"), chat(model="broken", stream=True)):
        with caplog.at_level("ERROR", logger="tale_integrations.serve"):
            response = httpx.post(f"{url}{CHAT}", json=body)
        rid = response.headers["x-request-id"]
        text = response.text
        assert "boom" not in text and "RuntimeError" not in text and rid in text
        if body.get("stream"):  # the headers were sent: the error is the stream's last chunk
            assert response.status_code == 200 and '"type":"server_error"' in text
        else:
            assert response.status_code == 500
            assert response.json()["error"]["type"] == "server_error"
            assert response.json()["error"]["code"] == "internal_error"
        assert any(rid in r.getMessage() and r.exc_info and "boom" in str(r.exc_info[1]) for r in caplog.records)


def test_allowed_origin_gets_cors_headers_and_its_preflight(http):
    ok = http.post(CHAT, json=chat(), headers={"origin": ALLOWED_ORIGIN})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    preflight = http.options(CHAT, headers={"origin": ALLOWED_ORIGIN, "access-control-request-method": "POST",
                                            "access-control-request-headers": "authorization, content-type"})
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-headers"] == "authorization, content-type"
    refused = http.options(CHAT, headers={"origin": "http://evil.example", "access-control-request-method": "POST"})
    assert_error(refused, 403, "origin_not_allowed", "Origin")
    assert "access-control-allow-origin" not in refused.headers


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost:8000", "[::1]:8000", "LOCALHOST"])
def test_loopback_host_names_are_answered(http, host):
    assert http.get("/health", headers={"host": host}).status_code == 200


def test_default_allowed_hosts():
    from tale_integrations.serve.cli import default_allowed_hosts

    assert default_allowed_hosts("127.0.0.1") == ("127.0.0.1", "localhost", "::1")
    assert default_allowed_hosts("::1", ["box.lan"]) == ("127.0.0.1", "localhost", "::1", "box.lan")
    assert default_allowed_hosts("127.0.0.2") == ("127.0.0.1", "localhost", "::1", "127.0.0.2")
    assert default_allowed_hosts("0.0.0.0") is None
    assert default_allowed_hosts("0.0.0.0", ["api.example"]) == ("api.example",)


def test_an_empty_api_key_is_refused(tiny_generator):
    from tale_integrations.serve import create_app

    for key in ("", "   "):
        with pytest.raises(ValueError, match="api_key"):
            create_app(tiny_generator, api_key=key)


def test_a_good_request_is_still_answered_after_the_table(http):
    """Runs last in this module: the server that took every bad input above still answers."""
    response = http.post(CHAT, json=chat(max_tokens=3))
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 3
    assert http.get("/health").json()["status"] == "ok"


def test_the_chat_templates_own_message_is_passed_on(http):
    twice = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    for body in (chat(messages=twice), chat(messages=twice, stream=True), chat(messages=twice, tale_budget=9)):
        response = http.post(CHAT, json=body)
        assert_error(response, 400, "chat_template_error", "messages")
        assert "Conversation roles must alternate" in response.json()["error"]["message"]
