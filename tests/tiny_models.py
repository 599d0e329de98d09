"""Tiny real models for tests: a byte-level BPE tokenizer trained in milliseconds and a 2-layer
llama with random weights, plus a "scripted" variant whose output head makes greedy decoding emit
one chosen token forever (a deterministic real model for exact assertions).

Import as ``from tiny_models import ...`` (the tests folder is on the path, see pyproject.toml).
"""

from __future__ import annotations

from typing import Any

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
#: Whole strings the tiny tokenizer holds as single tokens, so a scripted model can emit them.
SCRIPT_TOKENS = ["[[40]]", " 7", "STOP"]


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


def spy(generator: Any) -> list[dict[str, Any]]:
    """Record every ``generate`` call of an HFGenerator (``agenerate`` and chat wrappers go through it)."""
    calls: list[dict[str, Any]] = []
    original = generator.generate

    def wrapper(prompts, **kwargs):
        calls.append({"prompts": prompts, **kwargs})
        return original(prompts, **kwargs)

    generator.generate = wrapper
    return calls


def build_chooser_model(tokenizer, *, seed: int = 0, max_positions: int = 256):
    """A tiny random llama that only ever emits `SCRIPT_TOKENS` or the end of turn, choosing among
    them by context: answers of varied length, right or wrong by question and budget (the answer is
    40 when ``[[40]]`` appears, else 7), so a budget search takes a different number of steps per
    question. Unlike `script_model` it survives ``save_pretrained``: it is a plain llama whose
    attention biases are on (all zero but one o_proj bias, which gives the last hidden state a
    constant direction) and whose output head puts every other token far below on that direction.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=max_positions, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
        attention_bias=True, initializer_range=0.3,  # large weights: the choice depends on the context
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    allowed = [*tokenizer.convert_tokens_to_ids(SCRIPT_TOKENS), tokenizer.eos_token_id]
    rows = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for layer in model.model.layers:
            attention = layer.self_attn
            for proj in (attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj):
                proj.bias.zero_()
        model.model.layers[-1].self_attn.o_proj.bias[0] = 30.0
        head = model.lm_head.weight
        head.zero_()
        head[:, 0] = -3.0
        for token in allowed:
            head[token] = torch.randn(config.hidden_size, generator=rows) * 10.0
            head[token, 0] = 3.0
        head[tokenizer.eos_token_id, 0] = 0.0  # ending is less likely than going on
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()
