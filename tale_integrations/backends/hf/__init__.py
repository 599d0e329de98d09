"""The local Hugging Face transformers backend: `HFGenerator` and its `HFSettings`.

``from tale_integrations.backends.hf import HFGenerator``. One concept per module:

- ``generator.py``: `HFGenerator`, the `Generator` (loading on first use, batching, streaming);
- ``settings.py``: `HFSettings`, every setting validated once, shared with `ChatTaleHF` (LangChain)
  and `TaleHFLLM` (LlamaIndex), and `CallSettings`, one call of those classes;
- ``loading.py``: the public loading API (checkpoint, adapter, device and dtype resolution), which
  ``training`` uses too;
- ``decoding.py``: `BatchDecoder`, one batch through ``model.generate``;
- ``streaming.py``: the token queue and the text deltas of a stream;
- ``tool_turns.py``: `ToolTurn`, one turn with tools or structured output (torch-free; both adapters
  use it);
- ``fast_path.py``: the fast path's one switch, in front of ``cache.py`` (a cache grown in place,
  shared-prefix prefill) and ``cpu_packing.py`` (oneDNN-packed CPU weights).

Needs the ``hf`` extra: ``pip install "tale-integrations[hf]"``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..._optional import is_available, require

if not is_available("torch"):
    require("torch", extra="hf")  # the ImportError that names the extra, without importing torch here

if TYPE_CHECKING:
    from .generator import HFGenerator
    from .settings import HFSettings

__all__ = ["HFGenerator", "HFSettings"]


def __getattr__(name: str) -> Any:
    # Loaded on first use, so that the adapters can import the torch-free ``tool_turns`` module
    # without ``import tale_integrations.langchain`` (or ``.llama_index``) pulling in torch.
    if name == "HFGenerator":
        from .generator import HFGenerator

        return HFGenerator
    if name == "HFSettings":
        from .settings import HFSettings

        return HFSettings
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
