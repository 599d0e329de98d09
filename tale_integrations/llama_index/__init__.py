"""LlamaIndex integration: TALE query engines and transforms, and `TaleHFLLM`, a LlamaIndex LLM over
the local Hugging Face backend.

Needs the ``llamaindex`` extra: ``pip install "tale-integrations[llamaindex]"`` (and ``[hf]`` to run
a local model).
"""

from tale_integrations._optional import require

require("llama_index.core", extra="llamaindex", purpose="the LlamaIndex integration")

from ._adapters import LlamaIndexEstimator, LlamaIndexGenerator, as_estimator  # noqa: E402
from .events import TaleBudgetEvent, TaleCall, TaleRun, TaleUsageEvent  # noqa: E402
from .llms import TaleHFLLM  # noqa: E402
from .query import TaleQueryEngine, TaleQueryTransform  # noqa: E402

__all__ = [
    "LlamaIndexEstimator",
    "LlamaIndexGenerator",
    "TaleBudgetEvent",
    "TaleCall",
    "TaleHFLLM",
    "TaleQueryEngine",
    "TaleQueryTransform",
    "TaleRun",
    "TaleUsageEvent",
    "as_estimator",
]
