"""The growing key/value cache and the bucketed prefill behind HFGenerator's decoding."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from tale_integrations.backends.hf import HFGenerator  # noqa: E402
from tale_integrations.backends.hf.cache import (  # noqa: E402
    GrowingLayer,
    buckets,
    growing_cache,
    layout,
    lazy_zeros,
    prefill,
    shared_prefix,
    supports_fast_path,
)

SYSTEM = "Answer the question step by step and give the answer in the format [[answer]]."


def chat(text: str, system: str | None = None) -> list[dict[str, str]]:
    turns = [{"role": "system", "content": system}] if system else []
    return turns + [{"role": "user", "content": text}]


def kv(batch: int, length: int, fill: float) -> torch.Tensor:
    return torch.full((batch, 2, length, 4), fill)


def test_growing_layer_appends_like_concatenation_across_buffer_growth():
    layer = GrowingLayer(capacity=100, chunk=3, lazy=False)
    expected_k = torch.empty(2, 2, 0, 4)
    for step, length in enumerate([5, 1, 1, 1, 1, 2, 1]):
        k, v = kv(2, length, float(step)), kv(2, length, -float(step))
        keys, values = layer.update(k, v)
        expected_k = torch.cat([expected_k, k], dim=-2)
        assert torch.equal(keys, expected_k)
        assert torch.equal(values, -expected_k)
        assert layer.get_seq_length() == expected_k.shape[-2]
    # 12 positions were written, in buffers grown 3 positions at a time: never more than one chunk spare.
    assert 12 <= layer._key_buffer.shape[-2] <= 15


@pytest.mark.parametrize("lazy", [False, True])
def test_growing_layer_never_allocates_beyond_capacity(lazy):
    layer = GrowingLayer(capacity=6, chunk=128, lazy=lazy)
    layer.update(kv(1, 4, 1.0), kv(1, 4, 1.0))
    assert layer._key_buffer.shape[-2] == 6
    layer.update(kv(1, 2, 2.0), kv(1, 2, 2.0))
    assert layer._key_buffer.shape[-2] == 6
    keys, _ = layer.update(kv(1, 1, 3.0), kv(1, 1, 3.0))  # past the planned capacity: still correct
    assert keys.shape[-2] == 7 and keys[0, 0, -1, 0] == 3.0


def test_lazy_growing_layer_takes_its_capacity_at_once_in_zeroed_pages_of_its_own():
    layer = GrowingLayer(capacity=40, chunk=3)  # lazy: the default on CPU
    expected = torch.empty(2, 2, 0, 4)
    for step in range(6):
        keys, _ = layer.update(kv(2, 1 + step, float(step)), kv(2, 1 + step, 0.0))
        expected = torch.cat([expected, kv(2, 1 + step, float(step))], dim=-2)
        assert torch.equal(keys, expected)
        assert layer._key_buffer.shape[-2] == 40  # sized once, never regrown
    assert torch.all(layer._key_buffer[..., expected.shape[-2]:, :] == 0)
    # Past the capacity it grows a chunk at a time (3 here), not a position at a time.
    for step in (25, 1, 1):
        keys, _ = layer.update(kv(2, step, 9.0), kv(2, step, 0.0))
        expected = torch.cat([expected, kv(2, step, 9.0)], dim=-2)
        assert torch.equal(keys, expected)
    assert layer._key_buffer.shape[-2] == 21 + 25 + 3
    buffer = lazy_zeros(torch.empty(0, dtype=torch.bfloat16), (3, 5))
    assert buffer.dtype == torch.bfloat16 and torch.all(buffer == 0)
    buffer[1, 2] = 7
    assert buffer.sum() == 7


def test_growing_layer_after_crop_and_batch_selection():
    layer = GrowingLayer(capacity=50, chunk=8)
    layer.update(torch.arange(2 * 2 * 4 * 4, dtype=torch.float).reshape(2, 2, 4, 4), kv(2, 4, 0.0))
    layer.crop(-1)
    keys, _ = layer.update(kv(2, 1, 9.0), kv(2, 1, 9.0))
    assert keys.shape[-2] == 4 and torch.all(keys[:, :, 3] == 9.0)
    before = keys[1].clone()
    layer.batch_select_indices(torch.tensor([1]))  # replaces keys by a tensor of its own
    keys, _ = layer.update(kv(1, 1, 5.0), kv(1, 1, 5.0))
    assert keys.shape == (1, 2, 5, 4)
    assert torch.equal(keys[0, :, :4], before)
    assert torch.all(keys[0, :, 4] == 5.0)


@pytest.mark.parametrize(
    ("lengths", "min_tokens", "expected"),
    [
        ([], 40, []),
        ([7], 40, [[0]]),
        ([10, 10, 10, 10, 10, 10, 10, 10], 40, [[0, 1, 2, 3, 4, 5, 6, 7]]),
        # Two clear length groups.
        ([10, 50, 11, 51, 12, 52, 13, 53], 40, [[0, 2, 4, 6], [1, 3, 5, 7]]),
        ([10, 10, 10, 10, 90], 40, [[0, 1, 2, 3], [4]]),
        # A group is not closed before it holds min_tokens real tokens...
        ([10, 10, 10, 10, 90], 100, [[0, 1, 2, 3, 4]]),
        # ...and a last group below min_tokens joins the one before it.
        ([40, 40, 40, 90, 12], 100, [[4, 0, 1, 2, 3]]),
    ],
)
def test_buckets_group_rows_of_similar_length(lengths, min_tokens, expected):
    assert buckets(lengths, min_tokens=min_tokens) == expected


def test_buckets_cover_every_row_once():
    lengths = [5, 90, 33, 34, 8, 120, 61, 62, 63, 7, 8, 9, 200, 201, 15]
    groups = buckets(lengths)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))


@pytest.fixture()
def small_buckets(monkeypatch):
    """Bucket the tiny tests' short prompts as real prompts are bucketed (several groups)."""
    from tale_integrations.backends.hf import cache as _hf_cache

    monkeypatch.setattr(_hf_cache, "MIN_BUCKET_TOKENS", 20)


def test_shared_prefix_and_layout():
    rows = [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [1, 2, 3, 4, 5, 6, 7, 8, 9, 12], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 13, 14]]
    assert shared_prefix(rows) == 9
    assert shared_prefix(rows, minimum=10) == 0
    assert shared_prefix(rows[:1]) == 0  # nothing to share in a batch of one
    assert shared_prefix([[1, 2, 3], [1, 2, 3, 4]], minimum=1) == 2  # each row keeps its last token
    ids, mask = layout([[1, 2, 3], [1, 2, 4, 5, 6]], 5, 0, shared=2)
    assert ids == [[1, 2, 0, 0, 3], [1, 2, 4, 5, 6]]
    assert mask == [[1, 1, 0, 0, 1], [1, 1, 1, 1, 1]]
    assert layout([[1, 2, 3], [4, 5]], 3, 0) == ([[1, 2, 3], [0, 4, 5]], [[1, 1, 1], [0, 1, 1]])


@pytest.mark.parametrize("system", [None, SYSTEM], ids=["left-padded", "shared-prefix"])
def test_prefill_matches_one_forward_over_the_laid_out_batch(tiny_model, tiny_tokenizer, small_buckets, system):
    gen = HFGenerator.from_model(tiny_model, tiny_tokenizer)
    rows = [gen.encode_chat(chat("x " * n, system)) for n in (1, 2, 3, 4, 30, 31, 32, 33)]
    width, pad = max(map(len, rows)), tiny_tokenizer.pad_token_id
    shared = shared_prefix(rows)
    assert (shared > 0) == (system is not None)
    assert supports_fast_path(tiny_model)
    assert len(buckets([len(r) - shared for r in rows])) > 1
    cache = growing_cache(tiny_model, capacity=width + 4)
    ids, mask = layout(rows, width, pad, shared)
    ids, mask = torch.tensor(ids)[:, :-1], torch.tensor(mask)[:, :-1]
    with torch.inference_mode():
        prefill(tiny_model, rows, width, pad, cache, shared)
        reference = tiny_model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                               use_cache=True)
    ref_cache = reference.past_key_values if hasattr(reference, "past_key_values") else reference.cache
    for ours, theirs in zip(cache.layers, ref_cache.layers):
        assert ours.keys.shape == theirs.keys.shape
        real = mask.bool()[:, None, :, None].expand_as(theirs.keys)
        torch.testing.assert_close(ours.keys[real], theirs.keys[real])
        torch.testing.assert_close(ours.values[real], theirs.values[real])
        # Padded positions are masked; they must only be finite (0 * NaN would poison the attention).
        assert torch.isfinite(ours.keys).all() and torch.isfinite(ours.values).all()


@pytest.mark.parametrize("system", [None, SYSTEM], ids=["left-padded", "shared-prefix"])
def test_fast_path_generates_the_same_tokens_as_plain_generate(tiny_model, tiny_tokenizer, small_buckets, system):
    gen = HFGenerator.from_model(tiny_model, tiny_tokenizer, max_batch_size=16)
    prompts = [chat("x " * n + "?", system) for n in (1, 2, 3, 4, 5, 40, 41, 42, 43, 44, 80)]
    caps = [12, 3, 12, 12, 7, 12, 12, 12, 1, 12, 12]
    rows = [gen.encode_chat(p) for p in prompts]
    assert gen._fast_path
    assert (shared_prefix(rows) > 0) == (system is not None)
    assert len(buckets([len(r) - shared_prefix(rows) for r in rows])) > 1
    fast = gen.generate(prompts, max_tokens=caps, stop=["STOP"])
    gen._fast_path = False
    plain = gen.generate(prompts, max_tokens=caps, stop=["STOP"])
    assert [(g.text, g.usage, g.finish_reason) for g in fast] == [(g.text, g.usage, g.finish_reason) for g in plain]
    # And each equals the row generated alone (no padding, no sharing).
    alone = [gen.generate([p], max_tokens=c, stop=["STOP"])[0] for p, c in zip(prompts, caps)]
    assert [g.text for g in fast] == [g.text for g in alone]


def test_fast_path_with_sampling_is_repeatable(tiny_model, tiny_tokenizer, small_buckets):
    gen = HFGenerator.from_model(tiny_model, tiny_tokenizer, temperature=1.0, seed=3)
    prompts = [chat("x " * n, SYSTEM) for n in (1, 20, 40, 60)]
    first = [g.text for g in gen.generate(prompts, max_tokens=10)]
    assert first == [g.text for g in gen.generate(prompts, max_tokens=10)]


@pytest.mark.gpu
def test_fast_path_on_cuda(tiny_model_dir, small_buckets):
    gen = HFGenerator(tiny_model_dir, device="cuda", dtype="float32").load()
    prompts = [chat("x " * n, SYSTEM) for n in (1, 2, 3, 4, 40, 41, 42, 43)]
    assert gen._fast_path
    fast = gen.generate(prompts, max_tokens=6)
    gen._fast_path = False
    plain = gen.generate(prompts, max_tokens=6)
    assert [g.usage.input_tokens for g in fast] == [len(gen.encode_chat(p)) for p in prompts]
    assert [g.text for g in fast] == [g.text for g in plain]
