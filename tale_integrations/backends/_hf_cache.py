"""Key/value cache and prompt prefill for `HFGenerator`'s batched decoding.

Two costs of plain ``model.generate`` on a left-padded batch are removed here:

- the default cache concatenates every layer's keys and values at every step, copying the whole
  cache each time; `GrowingLayer` writes into a buffer grown in chunks and hands out views;
- the prompt of every row is padded to the longest prompt of the batch, so short prompts pay for
  the padding in the prefill, and the prefix all rows share (a chat template's system turn) is
  computed once per row; `prefill` computes the shared prefix once, runs the rest of the rows in
  groups of similar length (buckets), each at its own width, and assembles one cache for the
  decoding that follows (laid out by `layout`: shared prefix, padding, each row's own tokens).

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

__all__ = [
    "CACHE_KWARG", "GrowingLayer", "buckets", "growing_cache", "layout", "prefill", "shared_prefix", "supports_fast_path",
]

#: The keyword ``generate`` and ``forward`` take the cache under (renamed from ``past_key_values``).
CACHE_KWARG = "cache" if hasattr(transformers.generation.utils, "ALL_CACHE_NAMES") else "past_key_values"
#: Fewest real prompt tokens a prefill bucket is given before a new one may start (see `buckets`).
MIN_BUCKET_TOKENS = 256


class GrowingLayer(DynamicLayer):
    """A `DynamicLayer` that appends into a preallocated buffer instead of concatenating every step.

    ``keys``/``values`` are views of the first ``n`` positions of the buffer. When full, the buffer
    grows by ``chunk`` positions, but not past ``capacity`` (the most the generation can need)
    unless more than that is written.
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


def shared_prefix(rows: Sequence[Sequence[int]], *, minimum: int = 8) -> int:
    """How many leading tokens every row shares (a chat template's system turn), or 0 below ``minimum``.

    Each row keeps at least its last token to itself, since ``generate`` computes that one.
    """
    if len(rows) < 2:
        return 0
    first, limit = rows[0], min(len(r) for r in rows) - 1
    shared = 0
    while shared < limit and all(r[shared] == first[shared] for r in rows):
        shared += 1
    return shared if shared >= minimum else 0


def layout(rows: Sequence[Sequence[int]], width: int, pad: int, shared: int = 0) -> tuple[list, list]:
    """Token ids and attention mask of a batch: the shared prefix, then padding, then each row's own tokens.

    With ``shared = 0`` this is plain left padding. Positions follow the attention mask, so every
    real token keeps the position it has in its own unpadded prompt.
    """
    ids = [list(r[:shared]) + [pad] * (width - len(r)) + list(r[shared:]) for r in rows]
    mask = [[1] * shared + [0] * (width - len(r)) + [1] * (len(r) - shared) for r in rows]
    return ids, mask


def _start_layer(layer: Any, keys: Any, values: Any, batch: int, length: int) -> None:
    """Give an empty `GrowingLayer` a zeroed buffer of ``length`` positions for ``batch`` rows."""
    layer.lazy_initialization(keys, values)
    layer.reserve(keys.new_empty((batch, keys.shape[1], length, keys.shape[-1])),
                  values.new_empty((batch, values.shape[1], length, values.shape[-1])), length)
    layer.keys = layer._key_buffer[..., :length, :]
    layer.values = layer._value_buffer[..., :length, :]


def prefill(model: Any, rows: Sequence[Sequence[int]], width: int, pad: int, cache: Any, shared: int = 0) -> None:
    """Fill ``cache`` with every row's prompt but its last token, laid out as `layout` lays out the batch.

    The ``shared`` prefix runs once for the whole batch; the rest of the rows runs in groups of
    similar length (see `buckets`), each at its own width. The last token of each row is left for
    ``generate``, which computes it (and the first new token) for the whole batch. Padded positions
    are masked by the attention mask; they hold zeros or the padding token's (finite) keys.
    """
    if width < 2:
        return
    device, layers, batch = model.device, cache.layers, len(rows)
    prefix: list[tuple[Any, Any]] = []
    if shared:
        part = DynamicCache(config=model.config)
        ids = torch.tensor([list(rows[0][:shared])], device=device)
        positions = torch.arange(shared, device=device)[None]
        model(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=positions, use_cache=True,
              logits_to_keep=1, **{CACHE_KWARG: part})
        prefix = [(done.keys, done.values) for done in part.layers]
        for layer, (keys, values) in zip(layers, prefix):
            _start_layer(layer, keys, values, batch, width - 1)
            layer.keys[:, :, :shared, :] = keys
            layer.values[:, :, :shared, :] = values
    rests = [len(r) - shared for r in rows]
    for group in buckets(rests):
        group_width = max(rests[i] for i in group)
        if group_width < 2:
            continue
        ids, own = layout([rows[i][shared:] for i in group], group_width, pad)
        ids, own = torch.tensor(ids, device=device)[:, :-1], torch.tensor(own, device=device)[:, :-1]
        positions = shared + (own.cumsum(-1) - 1).clamp(min=0)
        mask = torch.cat([own.new_ones((len(group), shared)), own], dim=-1)
        part = DynamicCache(config=model.config)
        for layer, (keys, values) in zip(part.layers, prefix):
            layer.update(keys.expand(len(group), -1, -1, -1), values.expand(len(group), -1, -1, -1))
        model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1,
              **{CACHE_KWARG: part})
        index = torch.tensor(group, device=device)
        start = width - group_width
        for layer, done in zip(layers, part.layers):
            if not layer.is_initialized:
                _start_layer(layer, done.keys, done.values, batch, width - 1)
            rows_here = index.to(done.keys.device)  # layers may sit on different GPUs (device_map="auto")
            layer.keys[rows_here, :, start:, :] = done.keys[:, :, shared:, :]
            layer.values[rows_here, :, start:, :] = done.values[:, :, shared:, :]
        del part
