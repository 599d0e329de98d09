"""`HFModelFields`: the settings that `ChatTaleHF` (LangChain) and `TaleHFLLM` (LlamaIndex) share, declared once.

Both classes are pydantic models over an `HFGenerator`. Each inherits this model next to its framework
base class (``class ChatTaleHF(HFModelFields, BaseChatModel)``) and declares only what is its own: the
output cap under its framework's name (named by `HFModelFields.cap_field`), and its framework's options.
How the fields become an `HFSettings` and then read back what the generator runs with is
``backends/hf/wrappers.py``'s, which this model's validator calls.

This module imports pydantic only: the framework packages import it when they are imported, and that
must not load torch. It lives outside ``backends/hf`` because importing that package imports torch
(and names the ``hf`` extra when torch is missing); ``wrappers.py`` is imported only once a model is made.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Self

from pydantic import BaseModel, BeforeValidator, PrivateAttr, model_validator

if TYPE_CHECKING:
    from .backends.hf import HFGenerator
    from .backends.hf.settings import CallSettings

__all__ = ["HFModelFields"]


def _fspath(value: Any) -> Any:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


#: A path setting: a str, or a path given as any ``os.PathLike`` (held as its str), or None.
PathSetting = Annotated[str | None, BeforeValidator(_fspath)]


class HFModelFields(BaseModel):
    """The settings of a framework class over an `HFGenerator`, under the names both frameworks use.

    They are `HFSettings`' under other names (``backends/hf/wrappers.py``: `LOADING_FIELDS`), checked
    once when the class is made; after that each field reads back what the generator runs with (a
    None temperature becomes the generator's, and ``max_batch_size``, ``seed`` and ``enforce_budget``
    are the generator's own). With ``from_generator`` the loading settings (``model_path`` to
    ``enforce_budget``) belong to the generator and cannot be given.

    Attributes:
        model_path: A local model folder (with ``config.json``), a merged TALE-PT checkpoint, a LoRA
            adapter folder (its base is read from ``adapter_config.json``) or a hub id (when online),
            as a str or a path; None for the embedded SmolLM2-135M-Instruct.
        adapter_path: A PEFT LoRA adapter folder applied on top of ``model_path`` (or the base it names).
        merge_adapter: Merge the adapter into the weights after loading (faster decoding).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; default CUDA when available, else CPU.
        dtype: ``"float32"``, ``"bfloat16"``, ``"float16"`` or ``"auto"``; default bf16 on CUDA, fp32 on CPU.
        temperature: Default sampling temperature; 0 means greedy decoding. Default: the generator's (0).
        max_batch_size: Prompts per forward pass; larger batches are split. Default 16.
        seed: Seed for sampled decoding, for repeatable runs.
        enforce_budget: Hold answers to their token budget while decoding (the backend's `BudgetEnforcer`).
        budget: Default token budget of each call, enforced while decoding; needs ``enforce_budget``.
        thinking_budget: Default thinking budget of each call: tokens the model may spend inside its
            thinking block before the end marker is forced (0 closes it at once); needs a chat
            template with a thinking block. The thinking comes back apart from the answer either way.
        chat_template_kwargs: Default extra chat-template arguments of each call, e.g.
            ``{"enable_thinking": False}``.
    """

    #: The name of the class's own output-cap field (``max_tokens`` or ``max_new_tokens``).
    cap_field: ClassVar[str]

    model_path: PathSetting = None
    adapter_path: PathSetting = None
    merge_adapter: bool = False
    device: str | None = None
    dtype: str | None = None
    temperature: float | None = None
    max_batch_size: int | None = None
    seed: int | None = None
    enforce_budget: bool = False
    budget: int | None = None
    thinking_budget: int | None = None
    chat_template_kwargs: dict[str, Any] | None = None

    _generator: Any = PrivateAttr(default=None)

    def model_post_init(self, context: Any, /) -> None:
        # Pydantic gives a model with private attributes a `model_post_init` that ends there; a subclass
        # that lists this model before its framework base would then never run the base's own (LangChain
        # records its versions in ``metadata`` there). Passing it on keeps the chain whole.
        super().model_post_init(context)

    @model_validator(mode="after")
    def _attach_generator(self) -> Self:
        from .backends.hf.wrappers import attach_generator  # the hf extra is needed only here

        # Checks the paths and settings now; the weights load on first use.
        self._generator = attach_generator(self, cap=self.cap_field)
        return self

    @classmethod
    def from_generator(cls, generator: HFGenerator, **fields: Any) -> Self:
        """Wrap a generator that is already built (loaded or not), e.g. ``HFGenerator.from_model(model, tokenizer)``.

        ``fields`` are the per-call defaults (``temperature``, the cap, ``budget``...; the cap and the
        temperature default to the generator's) and the framework's own options (LangChain's
        ``callbacks``, LlamaIndex's ``callback_manager``...).

        Raises:
            TypeError: ``generator`` lacks `HFGenerator`'s API, or a loading setting (``model_path``,
                ``device``, ``enforce_budget``...) was given: it belongs to the generator.
        """
        from .backends.hf.wrappers import wrap_generator

        return wrap_generator(cls, generator, fields)

    @property
    def generator(self) -> HFGenerator:
        """The backend generator (its weights load on first use)."""
        return self._generator

    def _call_settings(self, kwargs: dict[str, Any], *, stop: Any = None,
                       framework: frozenset[str] = frozenset()) -> CallSettings:
        """One call's settings: its keyword arguments over the fields (``wrappers.call_settings``)."""
        from .backends.hf.wrappers import call_settings

        return call_settings(self, kwargs, cap=self.cap_field, stop=stop, framework=framework)
