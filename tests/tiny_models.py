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


#: A ChatML template with a thinking block, in both styles: by default the model opens the block
#: (Qwen3); ``open_thinking=True`` opens it in the prompt (DeepSeek-R1); ``enable_thinking=False``
#: closes an empty block in the prompt (Qwen3's switch).
THINKING_CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
    "{% elif open_thinking is defined and open_thinking %}<think>\n{% endif %}{% endif %}"
)
#: The thinking markers, single tokens of `build_thinking_tokenizer` (added, not special: as Qwen3's).
THINK_TOKENS = ["<think>", "</think>"]


def build_thinking_tokenizer():
    """The tiny tokenizer with ``<think>`` and ``</think>`` as single tokens and `THINKING_CHATML`."""
    tokenizer = build_tiny_tokenizer()
    tokenizer.add_tokens(THINK_TOKENS)
    tokenizer.chat_template = THINKING_CHATML
    return tokenizer


def build_chain_model(tokenizer, chain: dict[str, str], *, default: str, max_positions: int = 256):
    """A tiny llama whose greedy next token depends only on the last token: ``chain`` maps a token
    (as the vocabulary spells it, e.g. ``"Ċ"`` for a newline) to the next one, and every other token
    is followed by ``default`` (also every token's runner-up). Its one layer adds nothing (attention
    and MLP outputs zeroed), so the last token's embedding alone picks the next token: exact scripts
    such as "open a block, think three tokens, close it, answer, end the turn". Use
    ``tokenizer.eos_token`` to end the turn.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    def one(token: str) -> int:
        [token_id] = tokenizer.convert_tokens_to_ids([token])
        assert token_id is not None and token_id != tokenizer.unk_token_id or token == tokenizer.unk_token, token
        return token_id

    sources = list(chain)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=max(32, len(sources) + 1), intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    head = torch.nn.Linear(config.hidden_size, config.vocab_size, bias=True)
    with torch.no_grad():
        layer = model.model.layers[0]
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
        embed = model.model.embed_tokens.weight
        embed.zero_()
        embed[:, -1] = 1.0  # every token: a shared direction that makes the default win
        head.weight.zero_()
        head.bias.zero_()
        head.weight[one(default), -1] = 1.0
        for dim, source in enumerate(sources):
            embed[one(source)] = 0.0
            embed[one(source), dim] = 1.0
            embed[one(source), -1] = 0.1  # the default is the runner-up, should a rule forbid the chained token
            head.weight[one(chain[source]), dim] = 10.0
    model.lm_head = head
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


def build_ranking_model(tokenizer, script: dict[str, list[str]], *, max_positions: int = 1024):
    """A tiny llama whose next-token scores depend only on the last token, as a ranking: ``script``
    maps a token's text (``""``: any token not listed) to the texts it prefers next, best first
    (each one token of ``tokenizer``; ``tokenizer.eos_token`` ends the turn). Every other token
    scores the same, below them, so where a decoding rule forbids all of them the allowed token with
    the lowest id wins (a JSON-schema constraint then writes its forced text byte by byte). Its one
    layer adds nothing (attention and MLP outputs zeroed), and it survives ``save_pretrained``.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    def one(text: str) -> int:
        ids = [tokenizer.convert_tokens_to_ids(text)] if text in tokenizer.get_vocab() else \
            tokenizer.encode(text, add_special_tokens=False)
        assert len(ids) == 1, f"{text!r} is not one token"
        return ids[0]

    states = list(script)  # state 0 is "" (any other token)
    assert states[0] == "", 'the script starts with "" (any other token)'
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=max(16, len(states)), intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        embed = model.model.embed_tokens.weight
        embed.zero_()
        embed[:, 0] = 1.0
        for state, text in enumerate(states[1:], start=1):
            embed[one(text)] = 0.0
            embed[one(text), state] = 1.0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.zero_()
        for state, text in enumerate(states):
            for rank, wanted in enumerate(script[text]):
                model.lm_head.weight[one(wanted), state] = float(len(script[text]) - rank)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()
