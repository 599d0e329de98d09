"""Reading an OpenAI request body into a checked `GenerationRequest` (no web framework here).

Every field of the OpenAI chat-completions and completions APIs falls in one of four sets:

- supported: acted on (``model``, ``messages``/``prompt``, ``max_tokens``, ``max_completion_tokens``,
  ``temperature``, ``stop``, ``stream``, ``stream_options``); on chat also ``tools``, ``tool_choice``,
  ``response_format`` (``text``, ``json_object``, ``json_schema``), ``reasoning_effort`` and the
  fields of the open engines ``thinking_token_budget``, ``chat_template_kwargs`` and
  ``include_reasoning``; plus TALE's ``tale_budget``, ``tale_enforce``;
- accepted with no effect on the output: bookkeeping fields (``user``, ``metadata``, ``store``...),
  ``parallel_tool_calls`` (a reply may hold several calls either way) and ``seed`` (decoding is
  greedy unless a temperature is given; sampled decoding uses the server's own seed, so a
  per-request seed cannot be honoured inside a shared batch);
- supported only at their default value (``n=1``, no ``logprobs``, ``top_p=1``, zero penalties...):
  any other value is a 422;
- anything else is an unrecognised argument: 400, as OpenAI answers it.

Conversations may carry tool calls (an assistant message's ``tool_calls``) and their results
(``tool`` messages, matched to the call by ``tool_call_id``); they are read into the plain turns of
`backends.hf.tool_turns.ToolTurn` (an assistant turn with ``tool_calls`` of ``{"id", "name",
"arguments"}``, a ``tool`` turn with the tool's ``name``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ..backends.hf.settings import check_template_kwargs
from ..core.checks import check_flag, check_int, check_number, check_positive_int
from ..core.errors import SchemaError, TaleError, TaleTypeError, TaleValueError
from ..core.schemas import check_json_schema
from ..core.thinking import LEVELS
from ..core.tools import ToolChoice, ToolSpec, resolve_tool_choice, tool_specs
from .errors import bad_request, unknown_parameter, unsupported

__all__ = ["MAX_STOPS", "MAX_STOP_CHARS", "GenerationRequest", "parse_chat", "parse_completion"]

_COMMON = frozenset({"model", "max_tokens", "temperature", "stop", "stream", "stream_options", "seed",
                     "tale_budget", "tale_enforce"})
_IGNORED = frozenset({"user", "metadata", "store", "service_tier", "safety_identifier", "prompt_cache_key",
                      "prompt_cache_retention", "parallel_tool_calls"})
_CHAT = frozenset({"messages", "max_completion_tokens", "tools", "tool_choice", "response_format", "reasoning_effort",
                   "thinking_token_budget", "chat_template_kwargs", "include_reasoning"})


def _default(value: Any, *defaults: Any) -> bool:
    return value is None or any(value == d and type(value) is type(d) for d in defaults)


# field: (is the value the default?, why another value is refused)
_DEFAULT_ONLY_CHAT: dict[str, tuple[Callable[[Any], bool], str]] = {
    "n": (lambda v: _default(v, 1), "n must be 1: this server returns one choice per request"),
    "functions": (lambda v: v is None or v == [], "the legacy functions field is not supported; send tools"),
    "function_call": (lambda v: _default(v, "none"), "the legacy function_call field is not supported; send "
                                                       "tool_choice"),
    "logprobs": (lambda v: _default(v, False), "logprobs are not supported by this server"),
    "top_logprobs": (lambda v: _default(v, 0), "top_logprobs are not supported by this server"),
    "logit_bias": (lambda v: v is None or v == {}, "logit_bias is not supported by this server"),
    "presence_penalty": (lambda v: _default(v, 0, 0.0), "presence_penalty is not supported (only 0)"),
    "frequency_penalty": (lambda v: _default(v, 0, 0.0), "frequency_penalty is not supported (only 0)"),
    "top_p": (lambda v: _default(v, 1, 1.0), "top_p is not supported (only 1): sampling uses the full distribution"),
    "modalities": (lambda v: v is None or v == ["text"], "only the 'text' modality is supported"),
    "audio": (lambda v: v is None, "audio output is not supported by this server"),
    "prediction": (lambda v: v is None, "predicted outputs are not supported by this server"),
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
        tools: The offered tools (chat only).
        tool_choice: What the model must do with them (None: no tools offered).
        strict: A tool or the response schema asked for ``strict`` adherence.
        response_format: ``{"type": "json_object"}`` or ``{"type": "json_schema", "json_schema": {...}}``,
            or None for text.
        reasoning_effort: OpenAI's level (one of `core.thinking.LEVELS`), or None.
        thinking_token_budget: Thinking tokens allowed (0 closes the block at once), or None.
        chat_template_kwargs: Extra chat-template arguments (``{"enable_thinking": False}``), or None.
        include_reasoning: Return the thinking text (it is counted either way).
    """

    kind: Literal["chat", "completion"]
    model: str
    messages: list[dict[str, Any]]
    max_tokens: int | None
    temperature: float | None
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    tale_budget: int | Literal["auto"] | None
    tale_enforce: bool
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: ToolChoice | None = None
    strict: bool = False
    response_format: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    thinking_token_budget: int | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    include_reasoning: bool = True

    @property
    def thinking_asked(self) -> str | None:
        """The field that asks for a thinking setting (``reasoning_effort`` or ``thinking_token_budget``), or None."""
        if self.thinking_token_budget is not None:
            return "thinking_token_budget"
        return "reasoning_effort" if self.reasoning_effort is not None else None


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
    except (TaleValueError, TaleTypeError) as exc:
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


def _arguments(call: Any, where: str) -> dict[str, Any]:
    """One assistant ``tool_calls`` item as a plain tool call ``{"id", "name", "arguments"}``."""
    function = call.get("function") if isinstance(call, Mapping) else None
    if not isinstance(function, Mapping) or not isinstance(function.get("name"), str) or \
            not isinstance(call.get("id"), str):
        raise bad_request(f"{where} must be {{'id': ..., 'type': 'function', 'function': {{'name': ..., "
                          "'arguments': '<JSON object>'}}", param=where)
    arguments = function.get("arguments")
    try:
        parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
    except ValueError:
        parsed = None
    if not isinstance(parsed, Mapping):
        raise bad_request(f"{where}.function.arguments must be a JSON object in a string, got {_preview(arguments)}",
                          param=f"{where}.function.arguments")
    return {"id": call["id"], "name": function["name"], "arguments": dict(parsed)}


def _messages(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise bad_request("messages must be a non-empty list of {'role', 'content'} objects", param="messages",
                          code="missing_required_parameter" if value is None else "invalid_value")
    messages: list[dict[str, Any]] = []
    calls: dict[str, str] = {}  # tool-call id -> the tool's name
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, Mapping):
            raise bad_request(f"{where} must be an object with 'role' and 'content'", param=where)
        role = message.get("role")
        if role == "function" or message.get("function_call"):
            raise unsupported(where, f"{where}: legacy function messages are not supported; use tool_calls and "
                                     "tool messages")
        if role == "developer":  # OpenAI's newer name for the system role
            role = "system"
        if role not in ("system", "user", "assistant", "tool"):
            raise bad_request(f"{where}.role must be 'system', 'user', 'assistant', 'tool' or 'developer', got "
                              f"{role!r}", param=f"{where}.role")
        content = message.get("content")
        tool_calls = message.get("tool_calls") if role == "assistant" else None
        if content is None and role == "assistant":
            content = ""
        turn: dict[str, Any] = {"role": role, "content": _content(content, f"{where}.content")}
        if tool_calls:
            if not isinstance(tool_calls, list):
                raise bad_request(f"{where}.tool_calls must be a list of tool calls", param=f"{where}.tool_calls")
            turn["tool_calls"] = [_arguments(c, f"{where}.tool_calls[{k}]") for k, c in enumerate(tool_calls)]
            calls.update({c["id"]: c["name"] for c in turn["tool_calls"]})
        if role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or call_id not in calls:
                raise bad_request(f"{where}.tool_call_id must name a tool call of an earlier assistant message "
                                  f"(one of {sorted(calls)}), got {_preview(call_id)}", param=f"{where}.tool_call_id")
            turn["name"] = calls[call_id]
        messages.append(turn)
    if not any(m["content"].strip() or m.get("tool_calls") for m in messages):
        raise bad_request("every message is empty; send the text to answer", param="messages")
    return messages


def _tools(body: Mapping[str, Any]) -> tuple[tuple[ToolSpec, ...], ToolChoice | None, bool]:
    """The offered tools, the tool choice (None: no tools offered) and whether a tool asks for ``strict``."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    if tools is None or tools == []:
        if choice is not None and choice not in ("none", "auto"):
            raise bad_request("tool_choice is only allowed when tools are given", param="tool_choice")
        return (), None, False
    if not isinstance(tools, list):
        raise bad_request(f"tools must be a list of {{'type': 'function', 'function': {{...}}}}, got "
                          f"{_preview(tools)}", param="tools")
    for i, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, Mapping) else None
        if kind != "function":
            if isinstance(kind, str):
                raise unsupported(f"tools[{i}].type", f"tools[{i}] is a {kind!r} tool; only 'function' tools are "
                                                      "supported")
            raise bad_request(f"tools[{i}] must be {{'type': 'function', 'function': {{'name', 'description', "
                              "'parameters'}}", param=f"tools[{i}]")
    try:
        specs = tool_specs(tools)
    except TaleError as exc:  # SchemaError, TaleValueError, TaleTypeError: the message names tools[i]
        raise bad_request(str(exc), param="tools") from None
    try:
        resolved = resolve_tool_choice(choice, specs)
    except TaleError as exc:
        raise bad_request(str(exc), param="tool_choice") from None
    strict = any(isinstance(t.get("function"), Mapping) and t["function"].get("strict") is True for t in tools)
    return specs, resolved, strict


def _response_format(value: Any) -> tuple[dict[str, Any] | None, bool]:
    """The checked ``response_format`` (None for text) and whether it asks for ``strict``."""
    if value is None:
        return None, False
    kind = value.get("type") if isinstance(value, Mapping) else None
    if kind == "text":
        return None, False
    if kind == "json_object":
        return {"type": "json_object"}, False
    if kind != "json_schema":
        raise bad_request("response_format must be {'type': 'text'}, {'type': 'json_object'} or {'type': "
                          f"'json_schema', 'json_schema': {{'name': ..., 'schema': {{...}}}}}}, got {_preview(value)}",
                          param="response_format")
    body = value.get("json_schema")
    if not isinstance(body, Mapping) or "schema" not in body:
        raise bad_request("response_format.json_schema must be an object with the JSON Schema under 'schema'",
                          param="response_format.json_schema")
    where = "response_format.json_schema.schema"
    try:
        check_json_schema(body["schema"], where)
    except SchemaError as exc:
        raise bad_request(str(exc), param=where) from None
    return {"type": "json_schema", "json_schema": dict(body)}, body.get("strict") is True


def _thinking(body: Mapping[str, Any]) -> dict[str, Any]:
    effort = body.get("reasoning_effort")
    if effort is not None and effort not in LEVELS:
        raise bad_request(f"reasoning_effort must be one of {list(LEVELS)}, got {_preview(effort)}",
                          param="reasoning_effort")
    budget = _check(check_int, "thinking_token_budget", body.get("thinking_token_budget"), low=0)
    if budget is not None and effort is not None:
        raise bad_request("give reasoning_effort or thinking_token_budget, not both", param="thinking_token_budget")
    kwargs = _check(check_template_kwargs, "chat_template_kwargs", body.get("chat_template_kwargs"))
    include = _check(check_flag, "include_reasoning", body.get("include_reasoning"))
    return {"reasoning_effort": effort, "thinking_token_budget": budget,
            "chat_template_kwargs": None if kwargs is None else dict(kwargs),
            "include_reasoning": include is not False}


def _check_tale(common: dict[str, Any], messages: list[dict[str, Any]], thinking: Mapping[str, Any]) -> None:
    if common["tale_budget"] is None:
        return
    asked = next((k for k in ("reasoning_effort", "thinking_token_budget") if thinking.get(k) is not None), None)
    if asked is not None:
        raise bad_request(f"give tale_budget or {asked}, not both: on a thinking model tale_budget sets the thinking "
                          "budget", param=asked)
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
    _check_fields(body, _CHAT, _DEFAULT_ONLY_CHAT)
    common = _common(body)
    messages = _messages(body.get("messages"))
    thinking = _thinking(body)
    _check_tale(common, messages, thinking)
    tools, choice, strict_tools = _tools(body)
    response_format, strict_format = _response_format(body.get("response_format"))
    if response_format is not None and choice is not None and choice.mode != "none":
        raise unsupported("response_format", "response_format together with tools is not supported; send one or "
                                             "the other (or tool_choice 'none')")
    max_tokens = _int(body, "max_tokens")
    completion_tokens = _int(body, "max_completion_tokens")
    cap = completion_tokens if completion_tokens is not None else max_tokens
    return GenerationRequest(kind="chat", messages=messages, max_tokens=cap, tools=tools, tool_choice=choice,
                             strict=strict_tools or strict_format, response_format=response_format, **thinking,
                             **common)


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
    messages: list[dict[str, Any]] = [{"role": "user", "content": prompt}]
    _check_tale(common, messages, {})
    max_tokens = _int(body, "max_tokens")
    cap = COMPLETIONS_DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens
    return GenerationRequest(kind="completion", messages=messages, max_tokens=cap, **common)

