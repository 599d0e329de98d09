"""``tale serve``: an OpenAI-compatible HTTP server over a local model, with optional TALE budgets.

``create_app(generator)`` builds the FastAPI app (``from tale_integrations.serve import create_app``);
``create_upstream_app(url)`` builds the TALE front for an OpenAI-compatible engine (`serve.upstream`);
the ``tale serve`` command runs one of them with uvicorn. Needs the ``serve`` extra:
``pip install "tale-integrations[serve]"``.

Importing this package stays light (the command-line parser imports `serve.cli`); ``create_app``
loads FastAPI on first access.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app", "create_upstream_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "create_upstream_app":
        from .upstream import create_upstream_app

        return create_upstream_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
