"""oneDNN-packed linear layers for CPU decoding (`backends/hf/cpu_packing.py`), on real layers and a tiny model."""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from tale_integrations.backends.hf import HFGenerator  # noqa: E402
from tale_integrations.backends.hf.cpu_packing import (  # noqa: E402
    PackedLinear,
    _FileMappings,
    _page_out,
    can_pack,
    pack_linears,
)

if not can_pack(torch.nn.Sequential(torch.nn.Linear(2, 2))):
    pytest.skip("this PyTorch build has no oneDNN packed linear", allow_module_level=True)

PROMPT = [{"role": "user", "content": "Count: one two three"}]


@pytest.mark.parametrize("bias", [True, False])
def test_packed_linear_computes_what_linear_computes(bias):
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48, bias=bias)
    packed = PackedLinear(linear)
    with torch.no_grad():
        for x in (torch.randn(1, 64), torch.randn(3, 7, 64), torch.randn(7, 3, 64).transpose(0, 1)):  # last: strided
            torch.testing.assert_close(packed(x), linear(x), rtol=1e-4, atol=1e-4)
    assert torch.equal(packed.weight, linear.weight)
    assert [name for name, _ in packed.named_parameters()] == (["bias"] if bias else [])


def test_packed_linear_state_dict_is_a_linear_state_dict():
    torch.manual_seed(0)
    linear = torch.nn.Linear(32, 16)
    packed = PackedLinear(linear)
    state = packed.state_dict()
    assert set(state) == {"weight", "bias"} and torch.equal(state["weight"], linear.weight)
    again = torch.nn.Linear(32, 16)
    again.load_state_dict(state)
    assert torch.equal(again.weight, linear.weight)
    # And back into a packed layer: it is repacked from the dense weight.
    other = PackedLinear(torch.nn.Linear(32, 16))
    other.load_state_dict(state)
    x = torch.randn(5, 32)
    with torch.no_grad():
        torch.testing.assert_close(other(x), linear(x), rtol=1e-4, atol=1e-4)
    with pytest.raises(RuntimeError, match="size mismatch for weight"):
        PackedLinear(torch.nn.Linear(32, 8)).load_state_dict(state)


def test_pack_linears_keeps_the_model_output(tiny_model, tiny_tokenizer):
    from tiny_models import build_tiny_model

    model = build_tiny_model(tiny_tokenizer)
    linears = sum(type(m) is torch.nn.Linear for m in model.modules())
    ids = torch.tensor([tiny_tokenizer.encode("a b c d e f")])
    with torch.no_grad():
        before = model(input_ids=ids).logits
        assert pack_linears(model) == linears  # untied head: all of them
        after = model(input_ids=ids).logits
    assert not any(type(m) is torch.nn.Linear for m in model.modules())
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


def test_tied_head_is_packed_only_when_its_weight_is_file_mapped():
    model = torch.nn.Module()
    model.embed = torch.nn.Embedding(10, 4)
    model.head = torch.nn.Linear(4, 10, bias=False)
    model.head.weight = model.embed.weight
    model.get_input_embeddings = lambda: model.embed
    assert pack_linears(model) == 0  # in memory: packing would hold the weight twice
    assert type(model.head) is torch.nn.Linear


def test_file_mapped_tensors_are_recognised_and_paged_out_unchanged(tmp_path):
    path = tmp_path / "weights.bin"
    data = torch.arange(4 * 4096, dtype=torch.float32)
    data.numpy().tofile(path)
    mapped = torch.empty(0, dtype=torch.float32).set_(
        torch.UntypedStorage.from_file(str(path), shared=False, nbytes=os.path.getsize(path)))
    mappings = _FileMappings()
    assert mappings.holds(mapped)
    assert not mappings.holds(data)
    _page_out(mapped)
    assert torch.equal(mapped, data)  # the pages come back from the file


def test_generator_packs_what_it_loads_on_cpu_and_not_a_model_it_is_given(tiny_model_dir, tiny_model, tiny_tokenizer):
    loaded = HFGenerator(tiny_model_dir, device="cpu")
    plain = HFGenerator(tiny_model_dir, device="cpu", pack_weights=False)
    assert any(isinstance(m, PackedLinear) for m in loaded.model.modules())
    assert not any(isinstance(m, PackedLinear) for m in plain.model.modules())
    prompts = [PROMPT, [{"role": "user", "content": "x " * 30}]]
    assert [g.text for g in loaded.generate(prompts, max_tokens=12)] == [
        g.text for g in plain.generate(prompts, max_tokens=12)]
    HFGenerator.from_model(tiny_model, tiny_tokenizer)
    assert not any(isinstance(m, PackedLinear) for m in tiny_model.modules())


def test_pack_weights_errors(tiny_model_dir):
    with pytest.raises(TypeError, match="pack_weights must be True, False or None"):
        HFGenerator(tiny_model_dir, pack_weights="yes")
    with pytest.raises(ValueError, match="pack_weights=True needs a float32 model on CPU"):
        HFGenerator(tiny_model_dir, device="cpu", dtype="bfloat16", pack_weights=True).load()
    # Automatic: a bfloat16 model simply stays as it is.
    gen = HFGenerator(tiny_model_dir, device="cpu", dtype="bfloat16")
    assert not any(isinstance(m, PackedLinear) for m in gen.model.modules())
    assert gen.generate([PROMPT], max_tokens=3)[0].usage.output_tokens == 3


def test_unmerged_adapter_is_not_packed(tiny_model_dir, tmp_path):
    peft = pytest.importorskip("peft")
    model = HFGenerator(tiny_model_dir, device="cpu", pack_weights=False).model
    config = peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft.get_peft_model(model, config).save_pretrained(tmp_path / "adapter")
    gen = HFGenerator(tiny_model_dir, adapter=tmp_path / "adapter", device="cpu")
    assert not can_pack(gen.model)
    assert not any(isinstance(m, PackedLinear) for m in gen.model.modules())
    merged = HFGenerator(tiny_model_dir, adapter=tmp_path / "adapter", device="cpu", merge=True)
    assert any(isinstance(m, PackedLinear) for m in merged.model.modules())
    assert merged.generate([PROMPT], max_tokens=8)[0].text == gen.generate([PROMPT], max_tokens=8)[0].text


@pytest.mark.slow
def test_embedded_model_packed_and_plain_answer_alike(embedded_generator):
    from tale_integrations.core.prompts import answer_messages

    plain = HFGenerator(pack_weights=False)
    assert any(isinstance(m, PackedLinear) for m in embedded_generator.model.modules())
    questions = ["Tom has 3 apples and buys 5 more. How many apples does he have?",
                 "A book costs 12 dollars. How much do 4 books cost?"]
    prompts = [answer_messages(q) for q in questions]
    assert [g.text for g in embedded_generator.generate(prompts, max_tokens=40)] == [
        g.text for g in plain.generate(prompts, max_tokens=40)]
