"""Key/value cache and prompt prefill for batched decoding (a part of the fast path, see ``fast_path.py``).

Two costs of plain ``model.generate`` on a left-padded batch are removed here:

- the default cache concatenates every layer's keys and values at every step, copying the whole
  cache each time; `GrowingLayer` writes into a buffer grown in chunks and hands out views;
- the prompt of every row is padded to the longest prompt of the batch, so short prompts pay for
  the padding in the prefill, and the prefix all rows share (a chat template's system turn) is
  computed once per row; `prefill` computes the shared prefix once, runs the rest of the rows in
  groups of similar length (buckets), each at its own width, and assembles one cache for the
  decoding that follows (laid out by `layout`: shared prefix, padding, each row's own tokens).

Both are used only where they are known to apply (`supports_fast_path`) and the fast path is on;
anything else takes the plain ``generate`` path. `layout` is also the plain path's left padding.
"""

from __future__ import annotations

import math
import mmap
from collections.abc import Sequence
from typing import Any

from ..._optional import require

torch = require("torch", extra="hf", purpose="the local Hugging Face backend")
transformers = require("transformers", extra="hf", purpose="the local Hugging Face backend")
from transformers.cache_utils import DynamicCache, DynamicLayer  # noqa: E402

__all__ = [
    "CACHE_KWARG", "GrowingLayer", "buckets", "growing_cache", "layout", "lazy_zeros", "prefill", "shared_prefix",
    "supports_fast_path",
]

#: The keyword ``generate`` and ``forward`` take the cache under (renamed from ``past_key_values``).
CACHE_KWARG = "cache" if hasattr(transformers.generation.utils, "ALL_CACHE_NAMES") else "past_key_values"
#: Fewest real prompt tokens a prefill bucket is given before a new one may start (see `buckets`).
MIN_BUCKET_TOKENS = 256
#: Most padded prompt tokens one prefill forward pass takes (bounds its activations; see `buckets`).
MAX_PREFILL_TOKENS = 512


def lazy_zeros(like: Any, shape: tuple[int, ...]) -> Any:
    """CPU zeros shaped ``shape`` (dtype of ``like``) in fresh pages of their own, which take memory once touched.

    A private anonymous mapping outside the allocator: the positions a generation never writes (its
    unused cap, the padding of short prompts) cost nothing, and the whole buffer goes back to the
    system when it is freed.
    """
    count = math.prod(shape)
    if like.device.type != "cpu" or count == 0:
        return like.new_zeros(shape)
    size = count * like.element_size()
    # Private: a page only read (a padded position under the attention mask) stays the shared zero page.
    private = getattr(mmap, "MAP_PRIVATE", None)
    pages = mmap.mmap(-1, size, flags=private | mmap.MAP_ANONYMOUS) if private else mmap.mmap(-1, size)
    return torch.frombuffer(pages, dtype=like.dtype, count=count).view(shape)


def _new_zeros(like: Any, shape: tuple[int, ...]) -> Any:
    return like.new_zeros(shape)


class GrowingLayer(DynamicLayer):
    """A `DynamicLayer` that appends into a preallocated buffer instead of concatenating every step.

    ``keys``/``values`` are views of the first ``n`` positions of the buffer. On CPU (``lazy``, the
    default there) the buffer is sized to ``capacity`` (the most the generation can need) at once, in
    pages that take memory only when written (`lazy_zeros`). Elsewhere it is allocated as needed: when
    full, it grows by ``chunk`` positions, but not past ``capacity``. Either way it grows further if
    more than ``capacity`` is written.
    Any operation that replaces ``keys`` by a tensor of its own (batch selection, reordering) is
    noticed, and the next update starts a new buffer from it.
    """

    def __init__(self, capacity: int = 0, chunk: int = 128, lazy: bool | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.capacity = capacity
        self.chunk = chunk
        self.lazy = lazy
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
        lazy = key_like.device.type == "cpu" if self.lazy is None else self.lazy
        if lazy:  # memory is taken as positions are written: room for all of them at once
            size, zeros = (self.capacity if length <= self.capacity else length + self.chunk), lazy_zeros
        else:
            size, zeros = max(length, min(max(self.capacity, length), length + self.chunk)), _new_zeros
        keys = zeros(key_like, (*key_like.shape[:2], size, key_like.shape[-1]))
        values = zeros(value_like, (*value_like.shape[:2], size, value_like.shape[-1]))
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


def buckets(
    lengths: Sequence[int], *, waste: float = 0.1, min_tokens: int | None = None, max_tokens: int | None = None
) -> list[list[int]]:
    """Group row indices by prompt length so each group's padding stays small.

    Rows are sorted by length; a group is closed when adding the next row would make its padded
    tokens exceed its real tokens by more than ``waste``, once it holds at least ``min_tokens`` real
    tokens (smaller forward passes run the model at poor efficiency), or when its padded tokens
    would exceed ``max_tokens`` (which bounds the activations a forward pass holds; a single row may
    exceed it). A last group below ``min_tokens`` joins the one before it if that stays within
    ``max_tokens``.
    """
    min_tokens = MIN_BUCKET_TOKENS if min_tokens is None else min_tokens
    max_tokens = MAX_PREFILL_TOKENS if max_tokens is None else max_tokens
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    current: list[int] = []
    real = 0
    for i in order:
        # Sorted: the newcomer is the longest, so it sets the group's width.
        padded = lengths[i] * (len(current) + 1)
        if current and (padded > max_tokens or (real >= min_tokens and padded > (real + lengths[i]) * (1 + waste))):
            groups.append(current)
            current, real = [], 0
        current.append(i)
        real += lengths[i]
    if current:
        if groups and real < min_tokens and (len(groups[-1]) + len(current)) * lengths[current[-1]] <= max_tokens:
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


class _RowsLayer(DynamicLayer):
    """Some rows of a `GrowingLayer`, seen by one prefill forward pass.

    The pass's keys and values are written straight into the layer's buffer at positions ``start``
    on (a pass over one row with ``rows=None`` writes into every row: the shared prefix); attention
    gets a copy of those rows' positions ``0..end``, one layer at a time. The first write gives the
    layer its buffer: ``batch`` rows, ``length`` positions, zeros.
    """

    def __init__(self, target: GrowingLayer, rows: list[int] | None, start: int, batch: int, length: int) -> None:
        super().__init__()
        self.target, self.rows, self.start, self.batch, self.length = target, rows, start, batch, length
        self.is_initialized = True

    def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        target, end = self.target, self.start + key_states.shape[-2]
        if not target.is_initialized:
            target.lazy_initialization(key_states, value_states)
            # reserve reads only the shape, dtype and device of these: views, nothing allocated
            target.reserve(key_states[:1].expand(self.batch, -1, -1, -1),
                           value_states[:1].expand(self.batch, -1, -1, -1), self.length)
            target.keys = target._key_buffer[..., :self.length, :]
            target.values = target._value_buffer[..., :self.length, :]
        # Each layer's own device: layers may sit on different GPUs (device_map="auto").
        rows = slice(None) if self.rows is None else torch.tensor(self.rows, device=key_states.device)
        target._key_buffer[rows, :, self.start:end, :] = key_states
        target._value_buffer[rows, :, self.start:end, :] = value_states
        seen = slice(0, 1) if self.rows is None else rows
        return target._key_buffer[seen, :, :end, :], target._value_buffer[seen, :, :end, :]

    def get_seq_length(self, *args: Any, **kwargs: Any) -> int:
        return self.start


def _forward_into(model: Any, cache: Any, rows: list[int] | None, start: int, batch: int, length: int,
                  **inputs: Any) -> None:
    view = DynamicCache(config=model.config)
    view.layers = [_RowsLayer(layer, rows, start, batch, length) for layer in cache.layers]
    model(**inputs, use_cache=True, logits_to_keep=1, **{CACHE_KWARG: view})


def prefill(model: Any, rows: Sequence[Sequence[int]], width: int, pad: int, cache: Any, shared: int = 0) -> None:
    """Fill ``cache`` with every row's prompt but its last token, laid out as `layout` lays out the batch.

    The ``shared`` prefix runs once for the whole batch; the rest of the rows runs in groups of
    similar length (see `buckets`), each at its own width. Every pass writes its keys and values
    straight into the cache, so the prefill holds no copy of them. The last token of each row is
    left for ``generate``, which computes it (and the first new token) for the whole batch. Padded
    positions are masked by the attention mask; they hold zeros or the padding token's (finite) keys.
    """
    if width < 2:
        return
    device, batch, length = model.device, len(rows), width - 1
    if shared:
        ids = torch.tensor([list(rows[0][:shared])], device=device)
        _forward_into(model, cache, None, 0, batch, length, input_ids=ids, attention_mask=torch.ones_like(ids),
                      position_ids=torch.arange(shared, device=device)[None])
    rests = [len(r) - shared for r in rows]
    for group in buckets(rests):
        group_width = max(rests[i] for i in group)
        if group_width < 2:
            continue
        ids, own = layout([rows[i][shared:] for i in group], group_width, pad)
        ids, own = torch.tensor(ids, device=device)[:, :-1], torch.tensor(own, device=device)[:, :-1]
        start = width - group_width  # the group's columns; before them the shared prefix, then padding
        mask = torch.cat([own.new_ones((len(group), shared)), own.new_zeros((len(group), start - shared)), own], dim=-1)
        _forward_into(model, cache, group, start, batch, length, input_ids=ids, attention_mask=mask,
                      position_ids=shared + (own.cumsum(-1) - 1).clamp(min=0))
