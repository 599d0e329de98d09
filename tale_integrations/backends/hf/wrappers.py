"""What the framework classes that wrap an `HFGenerator` share: `ChatTaleHF` (LangChain) and `TaleHFLLM`
(LlamaIndex) hold their settings the same way, written once here.

- **Construction.** Both classes inherit `HFModelFields` (``tale_integrations/_hf_fields.py``, a
  pydantic model that imports no torch), which declares the fields they share under the frameworks'
  names; each class declares its own output cap and names it in ``cap_field``. Its validator calls
  `attach_generator`, which takes the generator that ``from_generator`` (`wrap_generator`) hands
  over, or else builds one from the fields as one `HFSettings` (`settings_from_fields`). Either way
  the fields then read back what the generator runs with: a temperature left None becomes the
  generator's, and ``max_batch_size``, ``seed`` and ``enforce_budget`` are the generator's own. An
  output cap left None means the generator's ``max_new_tokens`` (`DEFAULT_MAX_NEW_TOKENS`, 512,
  unless set) in both classes; ``ChatTaleHF.max_tokens`` stays None (to LangChain code a set
  ``max_tokens`` is a cap the user chose), while `TaleHFLLM` reads the number back into
  ``max_new_tokens``, which LlamaIndex reports as ``metadata.num_output``. Bad values fail there,
  checked by `HFSettings` and `CallSettings`.
- **from_generator.** `wrap_generator`: the generator must have `HFGenerator`'s API, and the
  loading settings (`LOADING_FIELDS`) belong to it, so giving one is an error. The generator
  reaches the validator through a context variable, not pydantic's validation context, which
  LangChain's models never pass on (their ``__init__`` runs the validation again without it).
- **Each call.** `call_settings` resolves the call's keyword arguments over the class's fields
  (`CallSettings.resolve`): the same names in both classes, and an unknown one is a TypeError that
  names it.

Nothing here imports torch until a generator is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any, TypeVar

from ...core.errors import TaleTypeError
from .settings import CallSettings, HFSettings

__all__ = ["LOADING_FIELDS", "attach_generator", "call_settings", "settings_from_fields", "wrap_generator"]

T = TypeVar("T")

#: The framework classes' names for the loading settings, and the `HFSettings` field each one sets.
LOADING_FIELDS = {
    "model_path": "model", "adapter_path": "adapter", "merge_adapter": "merge", "device": "device", "dtype": "dtype",
    "max_batch_size": "max_batch_size", "seed": "seed", "enforce_budget": "enforce_budget",
}
#: What a wrapped generator must have (`HFGenerator`'s API).
_API = ("generate", "agenerate", "stream", "astream")
#: The generator `wrap_generator` hands to the validator of the class it constructs.
_HANDED_OVER: ContextVar[Any] = ContextVar("tale_hf_handed_over_generator", default=None)


def _has_name_field(owner: Any) -> bool:
    return "model_name" in getattr(type(owner), "model_fields", {})  # TaleHFLLM's; ChatTaleHF's is a property


def settings_from_fields(owner: Any, *, cap: str) -> HFSettings:
    """`HFSettings` from a framework class's fields: its `LOADING_FIELDS`, its cap (the field named
    ``cap``), ``temperature`` and ``model_name`` if it has one; a None field means the default."""
    values = {setting: getattr(owner, field) for field, setting in LOADING_FIELDS.items()}
    values.update(max_new_tokens=getattr(owner, cap), temperature=owner.temperature,
                  model_name=owner.model_name if _has_name_field(owner) else None)
    return HFSettings(**{name: value for name, value in values.items() if value is not None})


def wrap_generator(cls: type[T], generator: Any, fields: Mapping[str, Any]) -> T:
    """``cls.from_generator(generator, **fields)``: a ``cls`` over a generator that is already built.

    Raises:
        TypeError: ``generator`` lacks `HFGenerator`'s API, or ``fields`` holds a loading setting
            (`LOADING_FIELDS`), which belongs to the generator.
    """
    missing = [name for name in _API if not callable(getattr(generator, name, None))]
    if missing or not hasattr(generator, "model_name"):
        raise TaleTypeError(f"generator must have the HFGenerator API (missing {missing or ['model_name']}), "
                            f"got {type(generator).__name__}")
    given = sorted(set(LOADING_FIELDS) & set(fields))
    if given:
        raise TaleTypeError(
            f"{cls.__name__}.from_generator() got loading setting(s) {given}; they configure how the model is "
            "loaded, so set them on the generator you pass (e.g. HFGenerator(..., enforce_budget=True))"
        )
    token = _HANDED_OVER.set(generator)
    try:
        return cls(**fields)
    finally:
        _HANDED_OVER.reset(token)


def _defaults(owner: Any, cap: str) -> CallSettings:
    return CallSettings(max_tokens=getattr(owner, cap), stop=getattr(owner, "stop", None),
                        temperature=owner.temperature, budget=owner.budget, thinking_budget=owner.thinking_budget,
                        chat_template_kwargs=owner.chat_template_kwargs)


def _enforcing(generator: Any) -> bool:
    return getattr(generator, "enforcement", None) is not None


def attach_generator(owner: Any, *, cap: str) -> Any:
    """The generator a framework class wraps, with the class's fields made to read back its settings.

    Args:
        owner: The class instance being validated.
        cap: The name of the class's output-cap field (``max_tokens`` or ``max_new_tokens``).

    Raises:
        ValueError: a setting out of range, or a default budget without ``enforce_budget``.
        FileNotFoundError: the model or adapter path does not exist.
    """
    generator = _HANDED_OVER.get()
    if generator is None:
        from .generator import HFGenerator  # torch is needed only to build one

        generator = HFGenerator(settings=settings_from_fields(owner, cap=cap))
    for name in ("temperature", "model_name") if _has_name_field(owner) else ("temperature",):
        if getattr(owner, name) is None:
            setattr(owner, name, getattr(generator, name, None))
    for name in ("max_batch_size", "seed"):
        setattr(owner, name, getattr(generator, name, getattr(owner, name)))
    owner.enforce_budget = _enforcing(generator)
    _defaults(owner, cap).check_enforced(type(owner).__name__, owner.enforce_budget)
    return generator


def call_settings(owner: Any, kwargs: Mapping[str, Any], *, cap: str, stop: Any = None,
                  framework: frozenset[str] = frozenset()) -> CallSettings:
    """One call's settings: its keyword arguments over the class's fields (see `CallSettings.resolve`)."""
    name = type(owner).__name__
    call = _defaults(owner, cap).resolve(name, kwargs, stop=stop, framework=framework)
    return call.check_enforced(name, _enforcing(owner.generator))
