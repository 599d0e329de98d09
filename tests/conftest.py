"""Shared fixtures: tiny real models built from a config (see tiny_models.py), and the embedded
model for `slow` tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DATA_DIR = Path(os.environ.get("TALE_DATA_DIR", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))

from tiny_models import SCRIPT_TOKENS, build_tiny_model, build_tiny_tokenizer, script_model  # noqa: F401

#: TALE_REQUIRE_ALL=1 turns a missing extra or data folder into a failure (tests/require_all.py).
pytest_plugins = ["require_all"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (marker 'gpu')")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    pytest.importorskip("transformers")
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer):
    return build_tiny_model(tiny_tokenizer)


@pytest.fixture()
def tiny_generator(tiny_model, tiny_tokenizer):
    from tale_integrations.backends.hf import HFGenerator

    return HFGenerator.from_model(tiny_model, tiny_tokenizer, model_name="tiny-llama")


@pytest.fixture()
def scripted_generator(tiny_tokenizer):
    """A factory: ``scripted_generator("[[40]]")`` is an HFGenerator that repeats that token."""
    from tale_integrations.backends.hf import HFGenerator

    def make(token_text: str, *, model_name: str = "scripted", **kwargs):
        ids = tiny_tokenizer.convert_tokens_to_ids([token_text])
        if token_text == tiny_tokenizer.eos_token:
            ids = [tiny_tokenizer.eos_token_id]
        assert ids and ids[0] != tiny_tokenizer.unk_token_id, f"{token_text!r} is not one token"
        model = script_model(build_tiny_model(tiny_tokenizer), ids[0])
        return HFGenerator.from_model(model, tiny_tokenizer, model_name=model_name, **kwargs)

    return make


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_model, tiny_tokenizer) -> Path:
    """The tiny model saved as a normal Hugging Face folder (safetensors)."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_model.save_pretrained(folder, safe_serialization=True)
    tiny_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def embedded_generator():
    """The embedded SmolLM2-135M-Instruct (converted once into the user's cache)."""
    from tale_integrations.backends.hf import HFGenerator

    return HFGenerator().load()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA_DIR.is_dir():
        pytest.skip(f"evaluation data not found at {DATA_DIR}; set TALE_DATA_DIR")
    return DATA_DIR
