"""The fast path's one switch (`backends/hf/fast_path.py`): on and off decode the same tokens."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from tale_integrations.backends.hf import HFGenerator  # noqa: E402
from tale_integrations.backends.hf import cache as kv_cache  # noqa: E402
from tale_integrations.backends.hf.cpu_packing import PackedLinear, can_pack  # noqa: E402
from tale_integrations.backends.hf.fast_path import ENV_VAR, is_enabled  # noqa: E402

SYSTEM = "Answer the question step by step and give the answer in the format [[answer]]."
#: A batch (> 1) that exercises every part of the fast path: a shared system turn, and prompt
#: lengths far enough apart to be prefilled in several buckets.
PROMPTS = [
    [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "x " * n + "?"}] for n in (1, 3, 40, 41)
] + [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is 2 + 3?"}]]


def packed(gen: HFGenerator) -> bool:
    return any(isinstance(m, PackedLinear) for m in gen.model.modules())


def record_new_ids(gen: HFGenerator, monkeypatch) -> list[list[int]]:
    """Record the new token ids of every row that ``model.generate`` returns (padding included)."""
    seen: list[list[int]] = []
    inner = gen.model.generate

    def generate(**kwargs):
        output = inner(**kwargs)
        seen.extend(output[:, kwargs["input_ids"].shape[1]:].tolist())
        return output

    monkeypatch.setattr(gen.model, "generate", generate)
    return seen


def test_the_same_tokens_with_the_fast_path_on_and_off(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(kv_cache, "MIN_BUCKET_TOKENS", 20)  # the tiny prompts bucketed as real ones are
    on = HFGenerator(tiny_model_dir, device="cpu", fast_path=True).load()
    off = HFGenerator(tiny_model_dir, device="cpu", fast_path=False).load()
    assert on._fast_path and not off._fast_path
    assert packed(on) == can_pack(off.model) and not packed(off)
    rows = [on.encode_chat(p) for p in PROMPTS]
    shared = kv_cache.shared_prefix(rows)
    assert shared > 0 and len(kv_cache.buckets([len(r) - shared for r in rows])) > 1
    ids_on, ids_off = record_new_ids(on, monkeypatch), record_new_ids(off, monkeypatch)
    for caps in (12, [12, 3, 12, 7, 12]):
        fast = on.generate(PROMPTS, max_tokens=caps)
        plain = off.generate(PROMPTS, max_tokens=caps)
        assert [(g.text, g.usage.output_tokens, g.finish_reason) for g in fast] == [
            (g.text, g.usage.output_tokens, g.finish_reason) for g in plain]
    assert ids_on == ids_off and len(ids_on) == 2 * len(PROMPTS)
    assert any(g.text for g in fast)


def test_the_environment_turns_it_off_unless_the_argument_decides(tiny_model_dir, tiny_model, tiny_tokenizer,
                                                                  monkeypatch):
    monkeypatch.setenv(ENV_VAR, "0")
    assert not is_enabled(None) and is_enabled(True)
    off = HFGenerator(tiny_model_dir, device="cpu").load()
    assert not off._fast_path and not packed(off)
    assert HFGenerator(tiny_model_dir, device="cpu", fast_path=True).load()._fast_path
    assert not HFGenerator.from_model(tiny_model, tiny_tokenizer)._fast_path
    with pytest.raises(ValueError, match=f"pack_weights=True, but {ENV_VAR}"):
        HFGenerator(tiny_model_dir, pack_weights=True)
    for value, expected in (("off", False), ("1", True), ("", True), ("yes", True)):
        monkeypatch.setenv(ENV_VAR, value)
        assert is_enabled(None) is expected
    monkeypatch.setenv(ENV_VAR, "fast")
    with pytest.raises(ValueError, match=f"{ENV_VAR}='fast' is not a switch"):
        HFGenerator(tiny_model_dir)
    monkeypatch.delenv(ENV_VAR)
    assert HFGenerator.from_model(tiny_model, tiny_tokenizer)._fast_path  # on by default


def test_pack_weights_asks_for_part_of_what_fast_path_false_turns_off(tiny_model_dir):
    with pytest.raises(ValueError, match="pack_weights=True asks for part of the fast path"):
        HFGenerator(tiny_model_dir, fast_path=False, pack_weights=True)
    with pytest.raises(ValueError, match="fast_path must be True or False or None"):
        HFGenerator(tiny_model_dir, fast_path="no")


@pytest.mark.gpu
def test_the_same_tokens_on_cuda(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(kv_cache, "MIN_BUCKET_TOKENS", 20)
    on = HFGenerator(tiny_model_dir, device="cuda", dtype="float32", fast_path=True).load()
    off = HFGenerator(tiny_model_dir, device="cuda", dtype="float32", fast_path=False).load()
    assert on._fast_path and not off._fast_path and not packed(on)  # packing is for CPU models only
    ids_on, ids_off = record_new_ids(on, monkeypatch), record_new_ids(off, monkeypatch)
    fast, plain = on.generate(PROMPTS, max_tokens=12), off.generate(PROMPTS, max_tokens=12)
    assert [g.text for g in fast] == [g.text for g in plain] and ids_on == ids_off
