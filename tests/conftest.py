"""Shared fixtures: tiny real models built from a config, and the embedded model for `slow` tests.

Tiny models are real transformers models with random weights and a real byte-level BPE tokenizer
trained here in milliseconds: every code path of the backends runs, nothing is downloaded.
A "scripted" tiny model has its output head replaced by a biased linear layer, so greedy decoding
emits one chosen token forever: a deterministic model for exact assertions.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DATA_DIR = Path(os.environ.get("TALE_DATA_DIR", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
#: Whole strings the tiny tokenizer holds as single tokens, so a scripted model can emit them.
SCRIPT_TOKENS = ["[[40]]", " 7", "STOP"]


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


def build_tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [
        "Let's think step by step and use less than 40 tokens:",
        "Q: What is 2 + 3? Please Give the response by strictly following this format: [[answer]]",
        "Task: Analyze the given question and estimate the minimum number of tokens. Budget: [[12]]",
        "The answer is 7. system user assistant",
    ] * 5
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    fast.add_tokens(SCRIPT_TOKENS)
    fast.chat_template = CHATML
    return fast


def build_tiny_model(tokenizer, *, seed: int = 0, max_positions: int = 256):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


def script_model(model, token_id: int):
    """Make greedy decoding emit ``token_id`` at every step (in place; returns the model)."""
    import torch

    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[token_id] = 10.0
    model.lm_head = head
    return model


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
