"""Reading an OpenAI request body into a checked `GenerationRequest` (no web framework here).

Every field of the OpenAI chat-completions and completions APIs falls in one of four sets:

- supported: acted on (``model``, ``messages``/``prompt``, ``max_tokens``, ``max_completion_tokens``,
  ``temperature``, ``stop``, ``stream``, ``stream_options``) plus TALE's ``tale_budget``, ``tale_enforce``;
- accepted with no effect on the output: bookkeeping fields (``user``, ``metadata``, ``store``...)
  and ``seed`` (decoding is greedy unless a temperature is given; sampled decoding uses the
  server's own seed, so a per-request seed cannot be honoured inside a shared batch);
- supported only at their default value (``n=1``, no ``tools``, no ``logprobs``, a ``text``
  response format, ``top_p=1``, zero penalties...): any other value is a 422;
- anything else is an unrecognised argument: 400, as OpenAI answers it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ..core.checks import check_flag, check_int, check_number, check_positive_int
from ..core.errors import TaleValueError
from .errors import bad_request, unknown_parameter, unsupported

__all__ = ["MAX_STOPS", "MAX_STOP_CHARS", "GenerationRequest", "parse_chat", "parse_completion"]

_COMMON = frozenset({"model", "max_tokens", "temperature", "stop", "stream", "stream_options", "seed",
                     "tale_budget", "tale_enforce"})
_IGNORED = frozenset({"user", "metadata", "store", "service_tier", "safety_identifier", "prompt_cache_key",
                      "prompt_cache_retention", "parallel_tool_calls"})


def _default(value: Any, *defaults: Any) -> bool:
    return value is None or any(value == d and type(value) is type(d) for d in defaults)


def _text_format(value: Any) -> bool:
    return value is None or (isinstance(value, Mapping) and value.get("type") == "text")


# field: (is the value the default?, why another value is refused)
_DEFAULT_ONLY_CHAT: dict[str, tuple[Callable[[Any], bool], str]] = {
    "n": (lambda v: _default(v, 1), "n must be 1: this server returns one choice per request"),
    "tools": (lambda v: v is None or v == [], "tools (function calling) are not supported by this server"),
    "tool_choice": (lambda v: _default(v, "none"), "tool_choice is not supported: this server has no tools"),
    "functions": (lambda v: v is None or v == [], "functions (function calling) are not supported by this server"),
    "function_call": (lambda v: _default(v, "none"), "function_call is not supported by this server"),
    "logprobs": (lambda v: _default(v, False), "logprobs are not supported by this server"),
    "top_logprobs": (lambda v: _default(v, 0), "top_logprobs are not supported by this server"),
    "response_format": (_text_format, "only response_format {'type': 'text'} is supported (no JSON modes)"),
    "logit_bias": (lambda v: v is None or v == {}, "logit_bias is not supported by this server"),
    "presence_penalty": (lambda v: _default(v, 0, 0.0), "presence_penalty is not supported (only 0)"),
    "frequency_penalty": (lambda v: _default(v, 0, 0.0), "frequency_penalty is not supported (only 0)"),
    "top_p": (lambda v: _default(v, 1, 1.0), "top_p is not supported (only 1): sampling uses the full distribution"),
    "modalities": (lambda v: v is None or v == ["text"], "only the 'text' modality is supported"),
    "audio": (lambda v: v is None, "audio output is not supported by this server"),
    "prediction": (lambda v: v is None, "predicted outputs are not supported by this server"),
    "reasoning_effort": (lambda v: v is None, "reasoning_effort is not supported by this server"),
    "verbosity": (lambda v: v is None, "verbosity is not supported by this server"),
    "web_search_options": (lambda v: v is None, "web search is not supported by this server"),
}
_DEFAULT_ONLY_COMPLETION: dict[str, tuple[Callable[[Any], bool], str]] = {
    **{k: _DEFAULT_ONLY_CHAT[k] for k in ("n", "logit_bias", "presence_penalty", "frequency_penalty", "top_p")},
    "best_of": (lambda v: _default(v, 1), "best_of must be 1: this server returns one choice per request"),
    "echo": (lambda v: _default(v, False), "echo is not supported by this server"),
    "logprobs": (lambda v: _default(v, 0), "logprobs are not supported by this server"),
    "suffix": (lambda v: v is None or v == "", "suffix (insertion) is not supported by this server"),
}

#: OpenAI's default output cap for the legacy completions endpoint (chat has none: the server's).
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
#: Most stop strings a request may give (OpenAI's limit).
MAX_STOPS = 4
#: Longest stop string, in characters (every decoding step of a row looks for them in its recent text).
MAX_STOP_CHARS = 256


def _preview(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters (an error message never echoes a whole body)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass(frozen=True, slots=True, kw_only=True)
class GenerationRequest:
    """A checked request, for either endpoint.

    Attributes:
        kind: ``"chat"`` or ``"completion"``.
        model: The model name the client asked for.
        messages: The conversation (a completion's prompt is one user turn).
        max_tokens: Output cap, or None for the server's default.
        temperature: Sampling temperature, or None for the server's default.
        stop: Stop strings (possibly empty).
        stream: Answer with server-sent events.
        include_usage: Add a usage chunk at the end of a stream.
        tale_budget: A budget (int), ``"auto"`` (estimate one), or None (plain request).
        tale_enforce: Hold the answer to its budget while decoding.
    """

    kind: Literal["chat", "completion"]
    model: str
    messages: list[dict[str, str]]
    max_tokens: int | None
    temperature: float | None
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    tale_budget: int | Literal["auto"] | None
    tale_enforce: bool


def _check_fields(body: Mapping[str, Any], own: frozenset[str], default_only: Mapping[str, Any]) -> None:
    for key, value in body.items():
        if key in own or key in _COMMON or key in _IGNORED:
            continue
        if key in default_only:
            is_default, why = default_only[key]
            if not is_default(value):
                raise unsupported(key, why)
            continue
        raise unknown_parameter(key)


def _check(check: Callable[..., Any], key: str, value: Any, **limits: Any) -> Any:
    """Run a `core.checks` check on the body field ``key`` (absent or null: None); a failure is a 400
    naming the field."""
    if value is None:
        return None
    try:
        return check(key, value, **limits)
    except TaleValueError as exc:
        raise bad_request(str(exc), param=key) from None


def _int(body: Mapping[str, Any], key: str) -> int | None:
    return _check(check_positive_int, key, body.get(key))


def _common(body: Mapping[str, Any]) -> dict[str, Any]:
    model = body.get("model")
    if model is None:
        raise bad_request("you must provide a model parameter", param="model", code="missing_required_parameter")
    if not isinstance(model, str):
        raise bad_request(f"model must be a string, got {type(model).__name__}", param="model")
    temperature = _check(check_number, "temperature", body.get("temperature"), low=0, high=2)
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > MAX_STOPS:
        raise bad_request(f"stop must be a non-empty string or a list of at most {MAX_STOPS} of them, "
                          f"got {_preview(stop)}", param="stop")
    if any(len(s) > MAX_STOP_CHARS for s in stop):
        longest = max(len(s) for s in stop)
        raise bad_request(f"each stop string may have at most {MAX_STOP_CHARS} characters; one has {longest}",
                          param="stop")
    stream = _check(check_flag, "stream", body.get("stream"))
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not stream:
            raise bad_request("stream_options is only allowed when stream is true", param="stream_options")
        if not isinstance(options, Mapping) or not isinstance(options.get("include_usage", False), bool):
            raise bad_request("stream_options must be an object like {'include_usage': true}", param="stream_options")
        include_usage = options.get("include_usage", False)
    _check(check_int, "seed", body.get("seed"))
    budget = body.get("tale_budget")
    if budget != "auto":
        _check(check_positive_int, "tale_budget", budget, hint=" or 'auto'")
    enforce = _check(check_flag, "tale_enforce", body.get("tale_enforce"))
    if enforce and budget is None:
        raise bad_request("tale_enforce needs tale_budget (a positive integer or 'auto')", param="tale_enforce")
    return {
        "model": model, "temperature": None if temperature is None else float(temperature), "stop": tuple(stop),
        "stream": bool(stream), "include_usage": include_usage, "tale_budget": budget, "tale_enforce": bool(enforce),
    }


def _content(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for k, part in enumerate(value):
            if not isinstance(part, Mapping) or "type" not in part:
                raise bad_request(f"{where}[{k}] must be a content part like {{'type': 'text', 'text': ...}}",
                                  param=where)
            if part["type"] != "text":
                raise unsupported(where, f"{where}[{k}] is a {part['type']!r} part; only text is supported")
            if not isinstance(part.get("text"), str):
                raise bad_request(f"{where}[{k}].text must be a string", param=where)
            texts.append(part["text"])
        return "\n".join(texts)
    raise bad_request(f"{where} must be a string or a list of text parts, got {type(value).__name__}", param=where)


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise bad_request("messages must be a non-empty list of {'role', 'content'} objects", param="messages",
                          code="missing_required_parameter" if value is None else "invalid_value")
    messages = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, Mapping):
            raise bad_request(f"{where} must be an object with 'role' and 'content'", param=where)
        role = message.get("role")
        if role in ("tool", "function") or message.get("tool_calls") or message.get("function_call"):
            raise unsupported(where, f"{where}: tool and function messages are not supported by this server")
        if role == "developer":  # OpenAI's newer name for the system role
            role = "system"
        if role not in ("system", "user", "assistant"):
            raise bad_request(f"{where}.role must be 'system', 'user', 'assistant' or 'developer', got {role!r}",
                              param=f"{where}.role")
        content = message.get("content")
        if content is None and role == "assistant":
            content = ""
        messages.append({"role": role, "content": _content(content, f"{where}.content")})
    if not any(m["content"].strip() for m in messages):
        raise bad_request("every message is empty; send the text to answer", param="messages")
    return messages


def _check_tale(common: dict[str, Any], messages: list[dict[str, str]]) -> None:
    if common["tale_budget"] is None:
        return
    users = [m for m in messages if m["role"] == "user"]
    if not users or not users[-1]["content"].strip():
        raise bad_request("tale_budget rewrites the last user message, and there is no non-empty one",
                          param="tale_budget")


def parse_chat(body: Any) -> GenerationRequest:
    """Check a ``/v1/chat/completions`` body.

    Raises:
        APIError: 400 for malformed values and unknown fields, 422 for unsupported ones.
    """
    if not isinstance(body, Mapping):
        raise bad_request("the request body must be a JSON object", code="invalid_json")
    _check_fields(body, frozenset({"messages", "max_completion_tokens"}), _DEFAULT_ONLY_CHAT)
    common = _common(body)
    messages = _messages(body.get("messages"))
    _check_tale(common, messages)
    max_tokens = _int(body, "max_tokens")
    completion_tokens = _int(body, "max_completion_tokens")
    cap = completion_tokens if completion_tokens is not None else max_tokens
    return GenerationRequest(kind="chat", messages=messages, max_tokens=cap, **common)


def parse_completion(body: Any) -> GenerationRequest:
    """Check a ``/v1/completions`` body: the prompt becomes one user turn of the chat template.

    Raises:
        APIError: 400 for malformed values and unknown fields, 422 for unsupported ones.
    """
    if not isinstance(body, Mapping):
        raise bad_request("the request body must be a JSON object", code="invalid_json")
    _check_fields(body, frozenset({"prompt"}), _DEFAULT_ONLY_COMPLETION)
    common = _common(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        raise unsupported("prompt", "only one prompt per request is supported; send one request per prompt")
    elif isinstance(prompt, list) and prompt and all(isinstance(p, int) or isinstance(p, list) for p in prompt):
        raise unsupported("prompt", "token-id prompts are not supported; send the prompt as a string")
    if not isinstance(prompt, str):
        raise bad_request("prompt must be a string", param="prompt",
                          code="missing_required_parameter" if prompt is None else "invalid_value")
    if not prompt.strip():
        raise bad_request("prompt is empty; send the text to complete", param="prompt")
    messages = [{"role": "user", "content": prompt}]
    _check_tale(common, messages)
    max_tokens = _int(body, "max_tokens")
    cap = COMPLETIONS_DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens
    return GenerationRequest(kind="completion", messages=messages, max_tokens=cap, **common)

