"""The fast path of the local backend, behind one switch.

Two parts, each used only where it applies:

- **packed CPU weights** (``cpu_packing.py``): the linear layers of a float32 CPU model keep their
  weights in oneDNN's own layout, 1.3-1.6x faster decoding in the same memory;
- **the cache path** (``cache.py``): a key/value cache grown in place instead of concatenated at
  every step, and a prefill that computes the prefix all rows share (a system turn) once and the
  rest of the rows in buckets of similar length. On any device, for models whose cache layers are
  all plain full-attention layers.

**The switch.** ``HFGenerator(fast_path=False)`` (`HFSettings.fast_path`) turns all of it off: the
weights stay as loaded and every batch goes through plain left-padded ``model.generate``. Left at
None (the default), the environment decides: ``TALE_HF_FAST_PATH=0`` (or ``false``, ``no``,
``off``) turns it off for every generator made afterwards; unset, ``1``, ``true``, ``yes`` or ``on``
leave it on. Within it, ``pack_weights`` narrows the packing alone (see `HFSettings`).

On or off, decoding computes the same thing: the cache path changes only where keys and values are
stored and in which passes the prompt is read, and a packed product differs from ``F.linear`` only
by float rounding (the order of the sums). ``tests/backends/test_hf_fast_path.py`` runs the same
greedy batches both ways and compares the tokens.

`HFGenerator` and `BatchDecoder` reach the two parts only through this module.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from ...core.errors import TaleValueError
from .cache import CACHE_KWARG, growing_cache, layout, prefill, shared_prefix, supports_fast_path
from .cpu_packing import can_pack, pack_linears, release_free_memory

__all__ = ["ENV_VAR", "batch_inputs", "is_enabled", "prefilled_cache", "prepare_model"]

#: The environment variable read when ``fast_path`` is None.
ENV_VAR = "TALE_HF_FAST_PATH"
_OFF = frozenset({"0", "false", "no", "off"})
_ON = frozenset({"", "1", "true", "yes", "on"})


def is_enabled(setting: bool | None) -> bool:
    """Whether the fast path is on: ``setting`` when given, else `ENV_VAR` (on unless it says off)."""
    if setting is not None:
        return setting
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if value not in _OFF | _ON:
        raise TaleValueError(f"{ENV_VAR}={os.environ[ENV_VAR]!r} is not a switch; set it to 0 (off) or 1 (on)")
    return value not in _OFF


def prepare_model(model: Any, *, enabled: bool, pack_weights: bool | None, loaded_here: bool) -> bool:
    """Apply the fast path to a model being installed; returns whether its batches take the cache path.

    Packs the weights where that applies (see `HFSettings.pack_weights`: by default only a model the
    generator loaded itself, never one it was handed).

    Raises:
        ValueError: ``pack_weights=True`` for a model that cannot be packed.
    """
    if not enabled:
        return False
    if pack_weights or (pack_weights is None and loaded_here):
        if can_pack(model):
            pack_linears(model)
        elif pack_weights:
            raise TaleValueError(
                "pack_weights=True needs a float32 model on CPU without an unmerged adapter, and a PyTorch "
                "build with oneDNN; pass pack_weights=None to pack only where it applies"
            )
    return supports_fast_path(model)


def batch_inputs(rows: Sequence[Sequence[int]], width: int, pad: int, *, cache_path: bool) -> tuple[list, list, int]:
    """Token ids, attention mask and shared-prefix length of a batch.

    Plain left padding, or on the cache path the prefix every row shares first (positions follow the
    mask, so every real token keeps the position it has in its own prompt).
    """
    shared = shared_prefix(rows) if cache_path else 0
    ids, mask = layout(rows, width, pad, shared)
    return ids, mask, shared


def prefilled_cache(model: Any, rows: Sequence[Sequence[int]], width: int, pad: int, shared: int,
                    capacity: int) -> dict[str, Any]:
    """``generate``'s keyword arguments for the cache path: a cache grown in place (room for
    ``capacity`` positions) that already holds every row's prompt but its last token."""
    cache = growing_cache(model, capacity=capacity)
    prefill(model, rows, width, pad, cache, shared)
    if model.device.type == "cpu":
        release_free_memory()  # the prefill's activations, before the cache grows on top of them
    return {CACHE_KWARG: cache}
