"""LangChain adapters for TALE.

Needs the ``langchain`` extra: ``pip install "tale-integrations[langchain]"``; `ChatTaleHF` also
needs the ``hf`` extra when it loads a model.
"""

from tale_integrations._optional import require

require("langchain_core", extra="langchain", purpose="the LangChain integration")

from .chat_models import ChatTaleHF  # noqa: E402

__all__ = ["ChatTaleHF"]
