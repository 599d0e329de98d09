"""LlamaIndex integration: `TaleHFLLM`, a LlamaIndex LLM over the local Hugging Face backend.

Needs the ``llamaindex`` extra: ``pip install "tale-integrations[llamaindex]"`` (and ``[hf]`` to run
a local model).
"""

from tale_integrations._optional import require

require("llama_index.core", extra="llamaindex", purpose="the LlamaIndex integration")

from .llms import TaleHFLLM  # noqa: E402

__all__ = ["TaleHFLLM"]
