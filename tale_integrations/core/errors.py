"""The package's error family: every error it raises on purpose is a `TaleError`.

Each class also keeps the built-in base callers caught before the family existed (``ValueError`` for
bad input, ``RuntimeError`` for a failed component, ``FileNotFoundError`` for a missing file), so
``except ValueError`` and ``except TaleError`` both work. The classes are defined here once and
re-exported by the modules that raise them.
"""

from __future__ import annotations

__all__ = [
    "BatcherClosed",
    "ConflictingSettings",
    "DatasetError",
    "DatasetNotFoundError",
    "EmbeddedModelMissing",
    "EstimatorError",
    "JobCancelled",
    "LearnedEstimatorError",
    "PromptTooLongError",
    "QueueFull",
    "RunLockedError",
    "RunMismatchError",
    "SchemaError",
    "TaleError",
    "TaleTypeError",
    "TaleValueError",
]


class TaleError(Exception):
    """Base of every error tale-integrations raises on purpose."""


class TaleValueError(TaleError, ValueError):
    """An argument or input has the right type but an unusable value (the message names it and the fix)."""


class TaleTypeError(TaleError, TypeError):
    """An argument or input has the wrong type (the message names it and what it should be)."""


class EstimatorError(TaleError, RuntimeError):
    """An estimator failed (raised, or returned the wrong number of estimates)."""


class PromptTooLongError(TaleValueError):
    """The prompt does not fit the model's context window (with room for at least one new token)."""


class RunMismatchError(TaleValueError):
    """The file belongs to a different run (its header differs)."""


class RunLockedError(TaleError, RuntimeError):
    """Another process is writing the same run (the message names it); wait for it, or pass ``--wait``."""


class DatasetError(TaleValueError):
    """A dataset cannot be read (unknown name, missing file, bad field mapping, hub unavailable)."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """A name that is neither a registered dataset nor a file, or a named dataset whose file is missing.

    Both a `DatasetError` (what evaluation callers catch) and a ``FileNotFoundError`` (what the
    training loaders raised for the same two cases), so one raise serves both.
    """


class ConflictingSettings(TaleValueError, TypeError):
    """Two spellings of one setting disagree (``max_tokens`` and its alias ``max_new_tokens``).

    Both a ``ValueError`` and a ``TypeError``: LangChain's chat models refuse such calls with the
    latter, LlamaIndex's with the former, and callers of either keep working.
    """


class LearnedEstimatorError(TaleValueError):
    """A learned estimator's file or fitting data is unusable (the message names the file or argument)."""


class SchemaError(TaleValueError):
    """A JSON schema (a tool's parameters, a structured-output schema) is not JSON Schema, or uses keywords
    the decoding constraint cannot enforce (the message names the schema, the keywords and the fix)."""


class EmbeddedModelMissing(TaleError, FileNotFoundError):
    """The package carrying the embedded model's GGUF file is not installed."""


class BatcherClosed(TaleError, RuntimeError):
    """The server's batcher is shutting down and takes no new requests."""


class JobCancelled(TaleError):
    """A server request was cancelled (its client went away) before it was generated."""


class QueueFull(TaleError, RuntimeError):
    """The server's waiting queue is full; the request was refused (answered 429, retry later)."""
