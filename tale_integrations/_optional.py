"""Optional dependencies: one helper that names the extra to install when one is missing."""

from __future__ import annotations

import functools
import importlib
import importlib.util
from types import ModuleType

__all__ = ["is_available", "require"]


@functools.cache
def is_available(module: str) -> bool:
    """Whether ``module`` can be imported (checked once, without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(module: str, *, extra: str, purpose: str | None = None) -> ModuleType:
    """Import ``module`` or raise an ImportError that names the extra providing it.

    Args:
        module: The module to import, e.g. ``"transformers"``.
        extra: The ``tale-integrations`` extra that installs it, e.g. ``"hf"``.
        purpose: What needs it, for the message (defaults to the extra's name).
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        what = purpose or f"the {extra!r} integration"
        raise ImportError(
            f"{what} needs the package {module!r}, which is not installed. "
            f'Install it with: pip install "tale-integrations[{extra}]"'
        ) from exc
