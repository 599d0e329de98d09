"""Thinking models behind LangChain chat classes: which knob, and the call's keyword arguments.

`thinking_target` finds the knob-table row (`core.thinking`) of a chat model from its vendor class
(``ChatOpenAI``, ``ChatAnthropic``, ``ChatGoogleGenerativeAI``, ``ChatOllama``) and its model name, or
from what the user declared (``thinking="vllm"`` for a ``ChatOpenAI`` pointed at a vLLM server); this
package's own ``ChatTaleHF`` has the local backend's knob when its chat template has a thinking block.
`ThinkingTarget.call_kwargs` turns a `ThinkingKnob`'s request fields into the keyword arguments that
class takes per call, so the vendor's own request building writes them (a table per class: the
wire field and the argument that carries it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..core.budget import Budget
from ..core.errors import TaleValueError
from ..core.thinking import (
    Engine,
    ThinkingKnob,
    ThinkingModel,
    ThinkingPolicy,
    find_thinking_model,
    looks_like_thinking_model,
    resolve_thinking,
    thinking_knob,
)
from ._adapters import _bound_kwargs, model_name, unwrap_chat_model

__all__ = ["ThinkingTarget", "budget_of", "thinking_target", "thinks"]

_OPENAI_ARGS = {"reasoning_effort": "reasoning_effort", "max_completion_tokens": "max_tokens",
                "max_tokens": "max_tokens"}

#: Per vendor class: the engines it can talk to (the first is its own) and, per wire field (a dotted
#: prefix), the call argument that carries it. ``extra_body`` takes every other field of an
#: OpenAI-compatible server's knob; ``options`` joins the model's own Ollama options.
_VENDORS: dict[str, tuple[tuple[Engine, ...], dict[str, str]]] = {
    "ChatOpenAI": ((Engine.OPENAI, Engine.VLLM, Engine.SGLANG, Engine.LLAMACPP), _OPENAI_ARGS),
    "AzureChatOpenAI": ((Engine.OPENAI,), _OPENAI_ARGS),
    "ChatAnthropic": ((Engine.ANTHROPIC,), {"thinking": "thinking", "output_config": "output_config",
                                            "max_tokens": "max_tokens"}),
    "ChatGoogleGenerativeAI": ((Engine.GEMINI,), {"thinking_config.thinking_budget": "thinking_budget",
                                                  "thinking_config.thinking_level": "thinking_level",
                                                  "max_output_tokens": "max_output_tokens"}),
    "ChatOllama": ((Engine.OLLAMA,), {"think": "reasoning", "options": "options"}),
    "ChatTaleHF": ((Engine.HF,), {"thinking_budget": "thinking_budget", "max_tokens": "max_tokens"}),
}
#: The model fields ChatOllama sends as ``options`` (its own request building reads these).
_OLLAMA_OPTIONS = ("mirostat", "mirostat_eta", "mirostat_tau", "num_ctx", "num_gpu", "num_thread", "num_predict",
                   "repeat_last_n", "repeat_penalty", "temperature", "seed", "stop", "tfs_z", "top_k", "top_p")
#: The call argument of each class's own output cap, read as the user's limit.
_CAP_ARGS = {"ChatGoogleGenerativeAI": "max_output_tokens", "ChatOllama": "num_predict"}


def _vendor(chat: Any) -> str | None:
    return next((cls.__name__ for cls in type(chat).__mro__ if cls.__name__ in _VENDORS), None)


def _leaves(fields: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in fields.items():
        path = f"{prefix}{key}"
        out += _leaves(value, path + ".") if isinstance(value, Mapping) else [(path, value)]
    return out


def _put(target: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for key in parents:
        target = target.setdefault(key, {})
    target[leaf] = value


def budget_of(record: Mapping[str, Any]) -> Budget | None:
    """The `Budget` a budget record (`core.decision.RECORD_KEYS`) holds, or None."""
    if record.get("budget") is None:
        return None
    return Budget(tokens=record["budget"], raw=record.get("budget_raw"), source=record.get("budget_source") or "fixed",
                  adjusted=record.get("budget_adjusted"))


@dataclass(frozen=True, slots=True)
class ThinkingTarget:
    """A chat model whose thinking TALE sets: its table row, name, vendor class and output limit.

    ``reserve``: output tokens the model itself needs above a thinking budget in its cap, or None; a
    ``ChatTaleHF``'s block markers and its backend's answer reserve (`HFGenerator.thinking_reserve`).
    """

    row: ThinkingModel
    model: str
    vendor: str
    limit: int | None
    chat: Any
    reserve: int | None = None

    def knob(self, budget: Budget | int | None, policy: ThinkingPolicy, *, cap: bool = True,
             limit: int | None = None) -> ThinkingKnob:
        """`core.thinking.thinking_knob` for this model, under its own limit and ``limit``.

        With a ``reserve``, the policy's answer reserve is raised to it, and a knob whose cap cannot hold
        the budget and that reserve (the output limit is too small) is not applied: the prompt carries
        the budget, the reason in ``adjusted``.
        """
        limits = [v for v in (self.limit, limit) if v is not None]
        if self.reserve is not None and policy.answer_reserve < self.reserve:
            policy = dataclasses.replace(policy, answer_reserve=self.reserve)
        knob = thinking_knob(self.row, budget, model=self.model, policy=policy, limit=min(limits) if limits else None,
                             cap=cap)
        if self.reserve is not None and knob.applied and knob.max_tokens is not None and knob.budget is not None \
                and knob.max_tokens - knob.budget < self.reserve:
            reason = (f"the output limit ({knob.max_tokens}) cannot hold {self.vendor}'s thinking block and answer "
                      f"reserve ({self.reserve} tokens) beside a thinking budget; the budget goes into the prompt")
            return dataclasses.replace(knob, budget=None, level=None, max_tokens=None, fields={}, applied=False,
                                       adjusted=reason)
        return knob

    def call_kwargs(self, knob: ThinkingKnob, bound: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The knob's fields as this class's per-call keyword arguments (empty when it is not applied).

        ``bound``: keyword arguments already set for the call (their ``extra_body`` is kept).
        """
        if not knob.applied:
            return {}
        engines, args = _VENDORS[self.vendor]
        own = self.row.engine == engines[0] or self.vendor != "ChatOpenAI"
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for path, value in _leaves(knob.fields):
            arg = next((args[p] for p in _prefixes(path) if p in args), None)
            if arg is None and own:
                raise TaleValueError(f"{self.vendor} has no call argument for the thinking field {path!r}")
            if arg is None:  # an OpenAI-compatible server's own field
                _put(extra, path, value)
            else:  # the argument itself, or a leaf inside it (thinking.type, options.num_predict)
                _put(kwargs, arg + path[len(_matched(path, args)):], value)
        if "options" in kwargs:  # ChatOllama replaces all its options with the call's
            own_options = {k: getattr(self.chat, k, None) for k in _OLLAMA_OPTIONS}
            kwargs["options"] = {**{k: v for k, v in own_options.items() if v is not None}, **kwargs["options"]}
        if extra:
            base = dict((bound or {}).get("extra_body") or getattr(self.chat, "extra_body", None) or {})
            for path, value in _leaves(extra):
                _put(base, path, value)
            kwargs["extra_body"] = base
        return kwargs


def _prefixes(path: str) -> list[str]:
    parts = path.split(".")
    return [".".join(parts[:i]) for i in range(len(parts), 0, -1)]


def _matched(path: str, args: Mapping[str, str]) -> str:
    return next(p for p in _prefixes(path) if p in args)


def _limit(model: Any, chat: Any, vendor: str) -> int | None:
    arg = _CAP_ARGS.get(vendor, "max_tokens")
    value = _bound_kwargs(model).get(arg, getattr(chat, arg, None))
    profile = getattr(chat, "profile", None) or {}
    limits = [v for v in (value, profile.get("max_output_tokens"))
              if isinstance(v, int) and not isinstance(v, bool) and v > 0]
    return min(limits) if limits else None


def _is_openai_api(chat: Any) -> bool:
    base = getattr(chat, "openai_api_base", None)
    return not base or "api.openai.com" in str(base)


def _local_target(model: Any, chat: Any, declared: Any, template: bool) -> ThinkingTarget | None:
    """A ``ChatTaleHF``'s knob: the local backend's row when its chat template has a thinking block."""
    name = model_name(model)
    row = find_thinking_model(name, Engine.HF) if declared is None else resolve_thinking(declared, name,
                                                                                         engine=Engine.HF)
    if row.engine is not Engine.HF:
        raise TaleValueError(f"thinking={declared!r}: ChatTaleHF cannot carry the {row.engine} knob; it takes hf")
    if not template:
        return None
    reserve = chat.generator.thinking_reserve  # reads the chat template: loads the model
    if reserve is None:
        if declared is None:
            return None
        raise TaleValueError(f"thinking={declared!r}: the chat template of {name!r} has no thinking block; give its "
                             "markers with HFGenerator(thinking=ThinkingEnforcement(markers=(start, end))), or pass "
                             "thinking=False to budget the prompt instead")
    return ThinkingTarget(row=row, model=name, vendor="ChatTaleHF", limit=_limit(model, chat, "ChatTaleHF"), chat=chat,
                          reserve=reserve)


def thinking_target(model: Any, declared: Any = None, *, template: bool = True) -> ThinkingTarget | None:
    """The thinking knob of a (possibly wrapped) chat model, or None: the budget goes into the prompt.

    Args:
        model: The chat model.
        declared: The integration's ``thinking`` setting (`core.thinking.resolve_thinking`): None detects
            (OpenAI, Anthropic and Gemini models by name on their vendor class; Ollama thinking families
            by name; a ``ChatTaleHF`` whose chat template has a thinking block); False never uses a knob;
            True, an engine name or a `ThinkingModel` declares it.
        template: Read a ``ChatTaleHF``'s chat template, which loads its weights. False (the check a
            constructor makes) skips it: the declaration is checked against the class only, and a
            ``ChatTaleHF`` gets None. Detection therefore happens on the first call.

    Raises:
        TaleValueError: a declared knob on a class that cannot carry it, or on a ``ChatTaleHF`` whose
            chat template has no thinking block.
    """
    if declared is False:
        return None
    chat = unwrap_chat_model(model)
    vendor = _vendor(chat) if chat is not None else None
    name = model_name(model)
    if vendor == "ChatTaleHF":
        return _local_target(model, chat, declared, template)
    if vendor is None:
        if declared is None:
            return None
        raise TaleValueError(
            f"thinking={declared!r}: TALE sets the thinking knob of {', '.join(_VENDORS)}; "
            f"{type(chat or model).__name__} is none of them (pass thinking=False to budget the prompt instead)"
        )
    engines = _VENDORS[vendor][0]
    engine: Engine | None = engines[0]
    if vendor == "ChatOpenAI" and not _is_openai_api(chat) and declared in (None, True):
        engine = None  # an OpenAI-compatible server: which one must be declared
        if declared is True:
            raise TaleValueError(f"thinking=True: {name!r} is served at {chat.openai_api_base}; name the server "
                                 "instead: thinking='vllm', 'sglang' or 'llamacpp'")
    if engine is None:
        return None
    if vendor == "ChatAnthropic" and getattr(chat, "thinking", None) is not None:
        # ChatAnthropic sends its own `thinking` over any per-call one: the model's setting wins
        if declared is None:
            return None
        raise TaleValueError(f"thinking={declared!r}: the ChatAnthropic model sets thinking={chat.thinking!r} itself, "
                             "which wins over TALE's; drop it from the model to let TALE set the budget")
    row = resolve_thinking(declared, name, engine=engine)
    if row is None:
        return None
    if row.engine not in engines:
        raise TaleValueError(f"thinking={declared!r}: {vendor} cannot carry the {row.engine} knob; it takes "
                             f"{', '.join(engines)}")
    return ThinkingTarget(row=row, model=name, vendor=vendor, limit=_limit(model, chat, vendor), chat=chat)


def thinks(model: Any) -> bool:
    """Whether the chat model thinks before answering, knob or not: a known thinking family by name, or
    thinking switched on in the model's own settings (``ChatAnthropic(thinking=...)``,
    ``reasoning_effort``, ``ChatOllama(reasoning=True)``), or a ``ChatTaleHF`` whose chat template has a
    thinking block (this loads its weights). A hard cap of budget plus a small reserve would be spent on
    its thinking, so the prompt trigger's cap is not sent to it."""
    chat = unwrap_chat_model(model)
    if chat is None:
        return False
    if _vendor(chat) == "ChatTaleHF" and chat.generator.thinking_markers is not None:
        return True
    own = [getattr(chat, name, None) for name in ("thinking", "reasoning_effort", "reasoning", "thinking_budget")]
    return looks_like_thinking_model(model_name(model)) or any(v not in (None, False, 0, "none") for v in own)
