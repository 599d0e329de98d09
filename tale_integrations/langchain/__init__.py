"""LangChain adapters for TALE.

Needs the ``langchain`` extra: ``pip install "tale-integrations[langchain]"``; `ChatTaleHF` also
needs the ``hf`` extra when it loads a model.

- `TaleRunnable`: TALE-EP as an LCEL Runnable around any chat model.
- `TaleBudgetMiddleware` / `TaleAgentState`: TALE for ``langchain.agents.create_agent`` (imported on
  first use, since they pull in LangGraph).
- `ChatTaleHF`: a local Hugging Face chat model.
- `ChatModelGenerator` / `RunnableEstimator`: a chat model as a core `Generator`, a Runnable as a
  core `BudgetEstimator`.
"""

from typing import Any

from tale_integrations._optional import require

require("langchain_core", extra="langchain", purpose="the LangChain integration")

from ._adapters import ChatModelGenerator, RunnableEstimator  # noqa: E402
from .chat_models import ChatTaleHF  # noqa: E402
from .runnable import TaleInput, TaleQuestion, TaleRunnable  # noqa: E402

__all__ = [
    "ChatModelGenerator",
    "ChatTaleHF",
    "RunnableEstimator",
    "TaleAgentState",
    "TaleBudgetMiddleware",
    "TaleInput",
    "TaleQuestion",
    "TaleRunnable",
]

_LAZY = {"TaleAgentState", "TaleBudgetMiddleware"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        require("langchain.agents", extra="langchain", purpose="TaleBudgetMiddleware (agents)")
        from . import middleware

        return getattr(middleware, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
