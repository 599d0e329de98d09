"""Key/value cache and prompt prefill for `HFGenerator`'s batched decoding.

Two costs of plain ``model.generate`` on a left-padded batch are removed here:

- the default cache concatenates every layer's keys and values at every step, copying the whole
  cache each time; `GrowingLayer` writes into a buffer grown in chunks and hands out views;
- the prompt of every row is padded to the longest prompt of the batch, so short prompts pay for
  the padding in the prefill; `prefill` runs rows of similar length together (buckets), each at its
  own width, and assembles one left-padded cache for the decoding that follows.

Both are used only where they are known to apply (`supports_fast_path`); anything else takes the
plain ``generate`` path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .._optional import require

torch = require("torch", extra="hf", purpose="the local Hugging Face backend")
transformers = require("transformers", extra="hf", purpose="the local Hugging Face backend")
from transformers.cache_utils import DynamicCache, DynamicLayer  # noqa: E402

__all__ = ["CACHE_KWARG", "GrowingLayer", "growing_cache", "prefill", "supports_fast_path"]

#: The keyword ``generate`` and ``forward`` take the cache under (renamed from ``past_key_values``).
CACHE_KWARG = "cache" if hasattr(transformers.generation.utils, "ALL_CACHE_NAMES") else "past_key_values"
#: Fewest real prompt tokens a prefill bucket is given before a new one may start (see `buckets`).
MIN_BUCKET_TOKENS = 256


class GrowingLayer(DynamicLayer):
    """A `DynamicLayer` that appends into a preallocated buffer instead of concatenating every step.

    ``keys``/``values`` are views of the first ``n`` positions of the buffer; the buffer grows by
    ``chunk`` positions (never beyond ``capacity``, the most the generation can need) when full.
    Any operation that replaces ``keys`` by a tensor of its own (batch selection, reordering) is
    noticed, and the next update starts a new buffer from it.
    """

    def __init__(self, capacity: int = 0, chunk: int = 128, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.capacity = capacity
        self.chunk = chunk
        self._key_buffer: Any = None
        self._value_buffer: Any = None

    def _owns_view(self) -> bool:
        return (
            self._key_buffer is not None
            and self.keys is not None
            and self.keys.dim() == 4
            and self.keys.data_ptr() == self._key_buffer.data_ptr()
            and self.keys.shape[0] == self._key_buffer.shape[0]
        )

    def reserve(self, key_like: Any, value_like: Any, length: int) -> None:
        """Make room for ``length`` positions (copying what is cached into a larger buffer if needed)."""
        kept = self.keys.shape[-2] if self.keys is not None and self.keys.dim() == 4 else 0
        if self._owns_view() and length <= self._key_buffer.shape[-2]:
            return
        size = max(length, min(max(self.capacity, length), length + self.chunk))
        keys = key_like.new_zeros((*key_like.shape[:2], size, key_like.shape[-1]))
        values = value_like.new_zeros((*value_like.shape[:2], size, value_like.shape[-1]))
        if kept:
            keys[..., :kept, :] = self.keys
            values[..., :kept, :] = self.values
        self._key_buffer, self._value_buffer = keys, values
        self.keys, self.values = keys[..., :kept, :], values[..., :kept, :]

    def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        kept = self.keys.shape[-2] if self.keys.dim() == 4 else 0
        end = kept + key_states.shape[-2]
        self.reserve(key_states, value_states, end)
        self._key_buffer[..., kept:end, :] = key_states
        self._value_buffer[..., kept:end, :] = value_states
        self.keys = self._key_buffer[..., :end, :]
        self.values = self._value_buffer[..., :end, :]
        return self.keys, self.values

    def reset(self) -> None:
        self._key_buffer = self._value_buffer = None
        super().reset()


def supports_fast_path(model: Any) -> bool:
    """Whether every cache layer of this model is a plain (full attention) `DynamicLayer`."""
    try:
        cache = DynamicCache(config=model.config)
    except Exception:  # noqa: BLE001 - an unusual config: keep generate's own cache
        return False
    return bool(cache.layers) and all(type(layer) is DynamicLayer for layer in cache.layers)


def growing_cache(model: Any, capacity: int) -> Any:
    """A `DynamicCache` for ``model`` whose layers are `GrowingLayer` (call `supports_fast_path` first)."""
    cache = DynamicCache(config=model.config)
    cache.layers = [GrowingLayer(capacity=capacity) for _ in cache.layers]
    return cache


def buckets(lengths: Sequence[int], *, waste: float = 0.1, min_tokens: int | None = None) -> list[list[int]]:
    """Group row indices by prompt length so each group's padding stays small.

    Rows are sorted by length; a group is closed when adding the next row would make its padded
    tokens exceed its real tokens by more than ``waste``, once it holds at least ``min_tokens`` real
    tokens (smaller forward passes run the model at poor efficiency). A last group below
    ``min_tokens`` joins the one before it.
    """
    min_tokens = MIN_BUCKET_TOKENS if min_tokens is None else min_tokens
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    current: list[int] = []
    real = 0
    for i in order:
        # Sorted: the newcomer is the longest, so it sets the group's width.
        if current and real >= min_tokens and lengths[i] * (len(current) + 1) > (real + lengths[i]) * (1 + waste):
            groups.append(current)
            current, real = [], 0
        current.append(i)
        real += lengths[i]
    if current:
        if groups and real < min_tokens:
            groups[-1].extend(current)
        else:
            groups.append(current)
    return groups


def prefill(model: Any, rows: Sequence[Sequence[int]], width: int, pad: int, cache: Any) -> None:
    """Fill ``cache`` with every row's prompt but its last token, as a left-padded batch of ``width - 1``.

    Rows of similar length run together at their own width (see `buckets`); the last token of each
    row is left for ``generate``, which computes it (and the first new token) for the whole batch.
    Padded positions hold zeros and are masked by the attention mask.
    """
    if width < 2:
        return
    device = model.device
    layers = cache.layers
    for group in buckets([len(r) for r in rows]):
        group_width = max(len(rows[i]) for i in group)
        if group_width < 2:
            continue
        ids = torch.tensor([[pad] * (group_width - len(rows[i])) + list(rows[i]) for i in group], device=device)
        mask = torch.tensor([[0] * (group_width - len(rows[i])) + [1] * len(rows[i]) for i in group], device=device)
        ids, mask = ids[:, :-1], mask[:, :-1]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        part = DynamicCache(config=model.config)
        model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1,
              **{CACHE_KWARG: part})
        index = torch.tensor(group, device=device)
        start = width - group_width
        for layer, done in zip(layers, part.layers):
            if not layer.is_initialized:
                layer.lazy_initialization(done.keys, done.values)
                shape_k = (len(rows), done.keys.shape[1], width - 1, done.keys.shape[-1])
                shape_v = (len(rows), done.values.shape[1], width - 1, done.values.shape[-1])
                layer.reserve(done.keys.new_empty(shape_k), done.values.new_empty(shape_v), width - 1)
                layer.keys = layer._key_buffer[..., : width - 1, :]
                layer.values = layer._value_buffer[..., : width - 1, :]
            layer.keys[index, :, start:, :] = done.keys
            layer.values[index, :, start:, :] = done.values
        del part
