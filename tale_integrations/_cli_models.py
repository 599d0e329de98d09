"""Choosing the model from the command line, for every ``tale`` subcommand that runs one.

One set of options (``--model``, ``--base-url``, ``--api-key``, ``--api-key-env``, ``--device``) and one
function turning them into a `Generator`: a local Hugging Face model (the embedded SmolLM2-135M-Instruct
by default) or any OpenAI-compatible endpoint. The API key is, in order: ``--api-key``, the variable
``--api-key-env`` names (an error if unset), ``$OPENAI_API_KEY``, then ``"EMPTY"`` when ``--base-url`` is
given (local servers such as vLLM or ``tale serve`` take any key), else the SDK's own default.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

__all__ = ["add_model_arguments", "local_generator", "make_generator"]

MODEL_HELP = ("a local model folder, 'embedded' (SmolLM2-135M-Instruct, the default), openai:NAME, or a model "
              "name served at --base-url")


def add_model_arguments(parser: argparse.ArgumentParser, *, model_help: str = MODEL_HELP,
                        device_help: str = "local models: cpu, cuda, cuda:N (default: cuda when available)") -> None:
    """Add ``--model``, ``--base-url``, ``--api-key``, ``--api-key-env`` and ``--device`` to ``parser``."""
    parser.add_argument("--model", metavar="MODEL", help=model_help)
    parser.add_argument("--base-url", metavar="URL", help="an OpenAI-compatible endpoint (vLLM, `tale serve`...)")
    parser.add_argument("--api-key", metavar="KEY", help="API key for the endpoint (see --api-key-env)")
    parser.add_argument("--api-key-env", metavar="VAR", help="environment variable holding the API key (default "
                        "$OPENAI_API_KEY, else 'EMPTY' with --base-url, for local servers)")
    parser.add_argument("--device", help=device_help)


def _api_key(api_key: str | None, api_key_env: str | None, base_url: str | None) -> str | None:
    if api_key:
        return api_key
    if api_key_env:
        if not (value := os.environ.get(api_key_env)):
            raise ValueError(f"--api-key-env {api_key_env}: that environment variable is not set")
        return value
    return os.environ.get("OPENAI_API_KEY") or ("EMPTY" if base_url else None)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def local_generator(model: str | None, *, purpose: str, **settings: Any) -> Any:
    """An `HFGenerator` for ``model`` (None or ``"embedded"``: the embedded model), its status lines on stderr.

    Raises an ImportError naming the ``hf`` extra when transformers is missing (``purpose`` says what needs it).
    """
    from ._optional import require

    require("transformers", extra="hf", purpose=purpose)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    from .backends.hf import HFGenerator

    return HFGenerator(None if model in (None, "", "embedded") else model, progress=_progress, **settings)


def make_generator(spec: str | None, *, base_url: str | None = None, api_key: str | None = None,
                   api_key_env: str | None = None, device: str | None = None, batch_size: int = 16,
                   seed: int | None = None, temperature: float | None = None, paper: bool = False,
                   max_concurrency: int | None = None, purpose: str = "a local model") -> tuple[Any, bool]:
    """Build the generator a ``--model`` value names; returns it and whether it is an API model.

    ``temperature`` becomes the generator's default, so the TALE-EP estimator call samples like the
    answer call (the API's own default would otherwise apply to it). With ``paper`` a local model is
    prompted with the reference scripts' raw text (``core.prompts.PAPER_CHAT_TEMPLATE``).
    """
    if base_url or (spec or "").startswith("openai:"):
        name = (spec or "").removeprefix("openai:")
        if not name:
            raise ValueError("an API model needs a name: --model openai:NAME (or --model NAME with --base-url)")
        key = _api_key(api_key, api_key_env, base_url)
        try:
            from .backends.openai import OpenAIGenerator
        except ImportError as exc:
            raise ImportError(
                f"API models need the openai backend: {exc}. Install it with: pip install \"tale-integrations[openai]\""
            ) from exc
        extra = {} if max_concurrency is None else {"max_concurrency": max_concurrency}
        return OpenAIGenerator(name, base_url=base_url, api_key=key, seed=seed, temperature=temperature, **extra), True
    from .core.prompts import PAPER_CHAT_TEMPLATE

    return local_generator(spec, purpose=purpose, device=device, max_batch_size=batch_size, seed=seed,
                           temperature=0.0 if temperature is None else temperature,
                           chat_template=PAPER_CHAT_TEMPLATE if paper else None), False
