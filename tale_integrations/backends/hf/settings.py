"""The settings of the local Hugging Face backend, written once for `HFGenerator`, `ChatTaleHF` and `TaleHFLLM`.

`HFSettings` holds everything that configures an `HFGenerator` (where the weights come from, how
they load, the default cap, sampling, budget enforcement, the fast path), validated once when it
is made. `HFGenerator` takes one (or the same names as keyword arguments); the framework classes
`ChatTaleHF` (LangChain) and `TaleHFLLM` (LlamaIndex) build one from their fields, the same way
(``wrappers.py``).

`ThinkingEnforcement` holds how thinking budgets are kept on a model whose chat template has a
thinking block (``backends/thinking.py``); it is the ``thinking`` setting.

`CallSettings` is the checked settings of one call: `HFGenerator`'s own, or a framework class's
keyword arguments (`CALL_ARGUMENTS`) resolved over the class's defaults by `CallSettings.resolve`,
so both classes take the same per-call names and refuse the same unknown ones (a `TypeError`
naming them).

Only the values are checked here (types and ranges); whether the paths exist and the device is
present is checked against the machine by `loading` when the generator is made. This module
imports neither torch nor transformers.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from ...core.budget import BudgetEnforcement
from ...core.checks import check_flag, check_int, check_number, check_positive_int
from ...core.errors import ConflictingSettings, TaleTypeError, TaleValueError
from ...core.prompts import QuestionFormat

__all__ = [
    "CALL_ARGUMENTS", "DEFAULT_MAX_NEW_TOKENS", "DTYPE_NAMES", "CallSettings", "ConflictingSettings", "HFSettings",
    "ThinkingEnforcement", "check_template_kwargs",
]

#: Output cap of a call that gives none, for `HFGenerator` and the framework classes alike.
DEFAULT_MAX_NEW_TOKENS = 512
#: dtype names (and their short forms) a setting may give instead of a ``torch.dtype``.
DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
               "float16": "float16", "fp16": "float16", "auto": "auto"}
#: Per-call keyword arguments of the framework classes (``max_new_tokens`` is an alias of ``max_tokens``).
CALL_ARGUMENTS = ("max_tokens", "max_new_tokens", "stop", "temperature", "budget", "answer_format", "thinking_budget",
                  "chat_template_kwargs")
#: Arguments of ``apply_chat_template`` that the backend sets itself, so ``chat_template_kwargs`` may not.
_OWN_TEMPLATE_ARGUMENTS = frozenset({"conversation", "messages", "add_generation_prompt", "tokenize", "return_dict",
                                     "chat_template", "return_tensors", "continue_final_message"})


def _is_torch_dtype(value: Any) -> bool:
    return type(value).__name__ == "dtype" and type(value).__module__ == "torch"


def _check_path(name: str, value: Any, what: str) -> None:
    if value is not None and not isinstance(value, (str, os.PathLike)):
        raise TaleTypeError(f"{name} must be {what} or None, got {type(value).__name__}")


def _check_text(name: str, value: Any, what: str) -> None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise TaleValueError(f"{name} must be {what}, got {value!r}")


def check_template_kwargs(name: str, value: Any) -> Mapping[str, Any] | None:
    """Extra chat-template arguments (``{"enable_thinking": False}``), as a read-only mapping, or None."""
    if value is None:
        return None
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise TaleTypeError(f"{name} must be a dict of template arguments such as {{'enable_thinking': False}}, "
                            f"got {value!r}")
    own = sorted(_OWN_TEMPLATE_ARGUMENTS & set(value))
    if own:
        raise TaleValueError(f"{name} may not set {own}: the backend sets them itself")
    return MappingProxyType(dict(value))


@dataclass(frozen=True, slots=True, kw_only=True)
class ThinkingEnforcement:
    """How thinking budgets are kept on a model whose chat template has a thinking block
    (``backends/thinking.py``: `ThinkingBudget`). Inside a budgeted block the row cannot end its
    turn: an end of turn the model prefers there is replaced by the end marker, so the row goes on
    to its answer.

    Attributes:
        markers: The block's (start, end) text, e.g. ``("<think>", "</think>")``; None (default)
            reads them from the chat template (`backends.thinking.KNOWN_MARKERS`).
        answer_reserve: Output tokens kept for the answer after a budgeted block: the output cap is
            raised to hold the budget, the markers and this reserve when a call gives none, and a
            budget that a call's own cap cannot hold is shortened to fit. Default 256.
        hint_at: Fraction of the budget (above 0, below 1) at which `core.prompts.THINKING_WRAP_UP`
            is written into the block; None (default) for no hint.
    """

    markers: tuple[str, str] | None = None
    answer_reserve: int = 256
    hint_at: float | None = None

    def __post_init__(self) -> None:
        if self.markers is not None:
            markers = tuple(self.markers) if isinstance(self.markers, (list, tuple)) else None
            if markers is None or len(markers) != 2 or not all(isinstance(m, str) and m.strip() for m in markers):
                raise TaleValueError("ThinkingEnforcement.markers must be two non-empty strings (start, end), "
                                     f"e.g. ('<think>', '</think>'), got {self.markers!r}")
            object.__setattr__(self, "markers", markers)
        check_int("ThinkingEnforcement.answer_reserve", self.answer_reserve, low=1)
        check_number("ThinkingEnforcement.hint_at", self.hint_at, above=0, high=0.99, optional=True)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form."""
        return {"markers": None if self.markers is None else list(self.markers),
                "answer_reserve": self.answer_reserve, "hint_at": self.hint_at}


@dataclass(frozen=True, slots=True, kw_only=True)
class HFSettings:
    """Every setting of an `HFGenerator`, checked when made; change one with `dataclasses.replace`.

    Attributes:
        model: A local model folder (with ``config.json``), a merged TALE-PT checkpoint, a LoRA adapter
            folder (its base is read from ``adapter_config.json``), a hub id (when online), or None
            for the embedded SmolLM2-135M-Instruct.
        adapter: A PEFT LoRA adapter folder to apply on top of ``model`` (or on the base it names).
        merge: Merge the adapter into the weights after loading (faster decoding).
        device: ``"cpu"``, ``"cuda"`` (all GPUs, ``device_map="auto"``), ``"cuda:1"``...; default
            CUDA when available, else CPU.
        dtype: ``"float32"``, ``"bfloat16"``, ``"float16"`` (or ``fp32``, ``bf16``, ``fp16``),
            ``"auto"`` or a ``torch.dtype``; default bfloat16 on CUDA, float32 on CPU.
        max_new_tokens: Output cap when a call gives no ``max_tokens``. Default 512.
        max_batch_size: Prompts per forward pass; larger batches are split. Default 16.
        temperature: Default sampling temperature; 0 means greedy (the default).
        seed: Seed for sampled decoding, for repeatable runs.
        enforce_budget: Hold answers to their budget while decoding: True for the default
            `BudgetEnforcement`, or one of your own. Off by default (the paper only prompts).
        model_name: Name reported in each `Generation`; default the folder's name.
        trust_remote_code: Allow code from the model folder to run. Off by default.
        fast_path: The fast path (``fast_path.py``: prepacked CPU weights, a cache grown in place,
            a shared-prefix prefill). None (default) reads ``TALE_HF_FAST_PATH`` (``0`` turns it
            off), else on; False turns all of it off. The tokens are the same either way (up to
            float rounding in the packed products).
        pack_weights: Within the fast path, the CPU weight packing alone: None (default) packs
            float32 CPU models this generator loads (not `HFGenerator.from_model`'s), True insists
            (an error where it cannot), False never packs.
        chat_template: A Jinja chat template used instead of the tokenizer's own (which is left as it
            is), e.g. ``core.prompts.PAPER_CHAT_TEMPLATE`` (the reference scripts' raw prompt). Default:
            the model's.
        allow_unfinished: Load a TALE-PT output folder whose training has not finished (its
            ``tale_pt.json`` not yet written). Off by default: such a folder is refused, as its
            adapter may be missing or partial (``loading.check_source``).
        chat_template_kwargs: Extra arguments of the chat template for every call, e.g.
            ``{"enable_thinking": False}``; a call's own ``chat_template_kwargs`` are applied over them.
        thinking: How thinking blocks are handled (`ThinkingEnforcement`): their text returned apart
            as `Generation.reasoning` and budgets held while decoding. None turns that off (a
            thinking block then stays in the text).
    """

    model: str | os.PathLike[str] | None = None
    adapter: str | os.PathLike[str] | None = None
    merge: bool = False
    device: str | None = None
    dtype: Any = None
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    max_batch_size: int = 16
    temperature: float = 0.0
    seed: int | None = None
    enforce_budget: bool | BudgetEnforcement = False
    model_name: str | None = None
    trust_remote_code: bool = False
    fast_path: bool | None = None
    pack_weights: bool | None = None
    chat_template: str | None = None
    allow_unfinished: bool = False
    chat_template_kwargs: Mapping[str, Any] | None = None
    thinking: ThinkingEnforcement | None = ThinkingEnforcement()

    def __post_init__(self) -> None:
        _check_path("model", self.model, "a path or a hub id")
        _check_path("adapter", self.adapter, "a path")
        check_flag("merge", self.merge)
        if self.device is not None and (not isinstance(self.device, str) or not self.device.strip()):
            raise TaleTypeError(f"device must be a string such as 'cpu', 'cuda' or 'cuda:1', got {self.device!r}")
        if self.dtype is not None and not _is_torch_dtype(self.dtype) and self.dtype not in DTYPE_NAMES:
            raise TaleValueError(f"dtype must be one of {sorted(DTYPE_NAMES)} or a torch.dtype, got {self.dtype!r}")
        check_positive_int("max_new_tokens", self.max_new_tokens)
        check_positive_int("max_batch_size", self.max_batch_size)
        check_number("temperature", self.temperature, low=0, high=2, hint=" (0 = greedy)")
        check_int("seed", self.seed, optional=True)
        if not isinstance(self.enforce_budget, (bool, BudgetEnforcement)):
            raise TaleTypeError(
                f"enforce_budget must be a bool or a BudgetEnforcement, got {type(self.enforce_budget).__name__}"
            )
        _check_text("model_name", self.model_name, "a non-empty string or None (the folder's name)")
        check_flag("trust_remote_code", self.trust_remote_code)
        check_flag("fast_path", self.fast_path, optional=True)
        if self.pack_weights is not None and not isinstance(self.pack_weights, bool):
            raise TaleTypeError(f"pack_weights must be True, False or None (automatic), got {self.pack_weights!r}")
        if self.pack_weights and self.fast_path is False:
            raise TaleValueError("pack_weights=True asks for part of the fast path that fast_path=False turns off; "
                                 "drop one of them")
        _check_text("chat_template", self.chat_template,
                    "a non-empty Jinja template string, or None for the model's own")
        check_flag("allow_unfinished", self.allow_unfinished)
        object.__setattr__(self, "chat_template_kwargs",
                           check_template_kwargs("chat_template_kwargs", self.chat_template_kwargs))
        if self.thinking is not None and not isinstance(self.thinking, ThinkingEnforcement):
            raise TaleTypeError(f"thinking must be a ThinkingEnforcement or None, got {type(self.thinking).__name__}")

    @property
    def enforcement(self) -> BudgetEnforcement | None:
        """The `BudgetEnforcement` that ``enforce_budget`` asks for, or None when budgets are not enforced."""
        if isinstance(self.enforce_budget, BudgetEnforcement):
            return self.enforce_budget
        return BudgetEnforcement() if self.enforce_budget else None

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (paths and dtypes as strings, a `BudgetEnforcement` as its dict)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in ("model", "adapter"):
            if values[name] is not None:
                values[name] = os.fspath(values[name])
        if _is_torch_dtype(self.dtype):
            values["dtype"] = str(self.dtype).removeprefix("torch.")
        if isinstance(self.enforce_budget, BudgetEnforcement):
            values["enforce_budget"] = self.enforce_budget.to_dict()
        if self.chat_template_kwargs is not None:
            values["chat_template_kwargs"] = dict(self.chat_template_kwargs)
        if self.thinking is not None:
            values["thinking"] = self.thinking.to_dict()
        return values

    def updated(self, owner: str, changes: Mapping[str, Any]) -> HFSettings:
        """These settings with ``changes`` applied (checked again); an unknown name is a `TypeError`."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            known = ", ".join(f.name for f in dataclasses.fields(self))
            raise TaleTypeError(f"{owner} got unknown setting(s) {unknown}; the settings are: {known}")
        return dataclasses.replace(self, **changes) if changes else self


@dataclass(frozen=True, slots=True, kw_only=True)
class CallSettings:
    """The checked settings of one call to `HFGenerator`; each None means the generator's default.

    Attributes:
        max_tokens: Output-token cap, a positive int.
        stop: Stop strings, each non-empty (an empty list means none).
        temperature: Sampling temperature from 0 (greedy) to 2.
        budget: Token budget enforced while decoding (the generator needs ``enforce_budget``).
        answer_format: The `QuestionFormat` whose wrap-up text the budget enforcer writes.
        thinking_budget: Tokens the model may spend inside its thinking block (0 closes it at once);
            needs a chat template with a thinking block.
        chat_template_kwargs: Extra chat-template arguments, e.g. ``{"enable_thinking": False}``.
    """

    max_tokens: int | None = None
    stop: tuple[str, ...] | None = None
    temperature: float | None = None
    budget: int | None = None
    answer_format: QuestionFormat | str | None = None
    thinking_budget: int | None = None
    chat_template_kwargs: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        check_positive_int("max_tokens", self.max_tokens, optional=True)
        check_number("temperature", self.temperature, low=0, high=2, optional=True, hint=" (0 = greedy)")
        check_positive_int("budget", self.budget, optional=True)
        check_int("thinking_budget", self.thinking_budget, low=0, optional=True)
        object.__setattr__(self, "chat_template_kwargs",
                           check_template_kwargs("chat_template_kwargs", self.chat_template_kwargs))
        if self.answer_format is not None:
            try:
                QuestionFormat(self.answer_format)
            except ValueError:
                listed = ", ".join(repr(f.value) for f in QuestionFormat)
                raise TaleValueError(f"answer_format must be one of {listed}, got {self.answer_format!r}") from None
        stop = self.stop
        if stop is not None:
            if isinstance(stop, (str, bytes)) or not isinstance(stop, Sequence) or not all(
                isinstance(s, str) and s for s in stop
            ):
                raise TaleValueError(f"stop must be a list of non-empty strings, got {stop!r}")
            object.__setattr__(self, "stop", tuple(stop) or None)

    def resolve(self, owner: str, kwargs: Mapping[str, Any], *, stop: Any = None,
                framework: frozenset[str] = frozenset()) -> CallSettings:
        """One call's settings: its keyword arguments over these defaults (a None argument keeps the default;
        ``chat_template_kwargs`` are applied over the default ones).

        Args:
            owner: The class's name, for messages.
            kwargs: The call's keyword arguments (`CALL_ARGUMENTS`, plus the ``framework`` names).
            stop: The call's stop strings where the framework passes them apart (LangChain's ``stop``).
            framework: Names the framework itself passes that mean nothing to the model (dropped).

        Raises:
            TypeError: an argument outside `CALL_ARGUMENTS` and ``framework``, naming it.
            ConflictingSettings: ``max_tokens`` and ``max_new_tokens`` disagree.
            ValueError: a value out of range.
        """
        unknown = sorted(set(kwargs) - set(CALL_ARGUMENTS) - framework)
        if unknown:
            raise TaleTypeError(
                f"{owner} got unsupported keyword argument(s) {unknown}; the per-call settings are "
                f"{', '.join(CALL_ARGUMENTS)}. Tools, structured output and another model per call are not supported"
            )
        given = {k: v for k, v in kwargs.items() if v is not None and k in CALL_ARGUMENTS}
        if stop is not None:
            given["stop"] = stop
        cap, alias = given.pop("max_tokens", None), given.pop("max_new_tokens", None)
        if cap is not None and alias is not None and cap != alias:
            raise ConflictingSettings(
                f"max_tokens={cap!r} and max_new_tokens={alias!r} disagree; give max_tokens or its alias "
                "max_new_tokens, not both"
            )
        if cap is not None or alias is not None:
            given["max_tokens"] = cap if cap is not None else alias
        extra = check_template_kwargs("chat_template_kwargs", given.get("chat_template_kwargs"))
        if extra is not None and self.chat_template_kwargs:  # a call's template arguments go over the defaults
            given["chat_template_kwargs"] = {**self.chat_template_kwargs, **extra}
        return dataclasses.replace(self, **given) if given else self

    def check_enforced(self, owner: str, enforcing: bool) -> CallSettings:
        """Refuse a budget that nothing would enforce (the generator was made without ``enforce_budget``)."""
        if self.budget is not None and not enforcing:
            raise TaleValueError(
                f"budget={self.budget} is enforced only while decoding, and {owner}'s generator was made without "
                "enforce_budget=True; turn enforcement on (with from_generator: on the HFGenerator you pass), "
                "or put the budget in the prompt"
            )
        return self

    def for_stream(self) -> dict[str, Any]:
        """Keyword arguments of `HFGenerator.stream` for one conversation."""
        kwargs = {"max_tokens": self.max_tokens, "stop": self.stop, "temperature": self.temperature,
                  "budget": self.budget}
        # Each of these only when set, else the generator's default.
        for name in ("answer_format", "thinking_budget", "chat_template_kwargs"):
            if getattr(self, name) is not None:
                kwargs[name] = getattr(self, name)
        return kwargs

    def for_generate(self, n: int) -> dict[str, Any]:
        """Keyword arguments of `HFGenerator.generate` for ``n`` conversations (the budgets given to each)."""
        kwargs = self.for_stream()
        budget = kwargs.pop("budget")
        if "thinking_budget" in kwargs:
            kwargs["thinking_budgets"] = [kwargs.pop("thinking_budget")] * n
        return {**kwargs, "budgets": None if budget is None else [budget] * n}
