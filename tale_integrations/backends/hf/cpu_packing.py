"""Faster CPU decoding: linear layers whose weights are prepacked for oneDNN (a part of the fast path, see
``fast_path.py``).

A decoding step multiplies a few rows of activations (one per sequence of the batch) by every
weight matrix of the model. PyTorch's default CPU product (``F.linear``) lays the weight out for
the kernel again on every call, which at a few rows costs more than the product itself: on a
2-core AVX-512 machine it reaches 50-100 GFLOP/s at 16 rows, and the 49k-word output head takes
17 ms. oneDNN can keep the weight in the kernel's own layout (``mkldnn._reorder_linear_weight``);
the product then runs at 125-165 GFLOP/s at 16 rows, and faster at 1 row and at prefill sizes too.

`pack_linears` replaces each plain ``nn.Linear`` of a float32 CPU model by a `PackedLinear`
holding only the packed weight, so the weights take no more memory than before. Checkpoint weights
are memory-mapped from their safetensors file; the pages of a weight that was packed are handed
back to the page cache (``MADV_PAGEOUT``, which never changes what memory holds), so they do not
count twice. The output head usually shares its weight with the token embedding: it is packed only
when that weight is file-mapped, since the embedding then reads back just the rows it looks up.

The packed model is for inference: its linear layers have no trainable weight (``weight`` gives a
dense copy, for code that reads it). The result of each product differs from ``F.linear`` only by
float rounding (the order of the sums).
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import sys
from typing import Any

from ..._optional import require

torch = require("torch", extra="hf", purpose="the local Hugging Face backend")

__all__ = ["PackedLinear", "can_pack", "pack_linears", "release_free_memory"]

_log = logging.getLogger(__name__)
#: The row count oneDNN chooses the packed layout for (a decoding batch); other counts run well too.
BATCH_HINT = 16
_MADV_RANDOM = 1
_MADV_PAGEOUT = 21


def _libc() -> Any:
    """The C library on Linux with glibc (for ``madvise`` and ``malloc_trim``), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    except (OSError, AttributeError):
        return None
    return libc if hasattr(libc, "malloc_trim") else None


_LIBC = _libc()


def _pack(weight: Any, batch_hint: int) -> Any:
    """``weight`` (out, in) in oneDNN's packed layout for products of about ``batch_hint`` rows."""
    with torch.no_grad():
        return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), batch_hint)


class PackedLinear(torch.nn.Module):
    """``y = x W^T + b`` with ``W`` stored in oneDNN's packed layout (inference only)."""

    def __init__(self, linear: Any, batch_hint: int = BATCH_HINT) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("packed", _pack(linear.weight, batch_hint), persistent=False)
        self.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach(), requires_grad=False)

    @property
    def weight(self) -> Any:
        """A dense copy of the weight, ``(out_features, in_features)`` (slow: for code that reads it)."""
        return self.packed.to_dense()

    def forward(self, x: Any) -> Any:
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.packed, self.bias, "none", [], "")

    # A state dict holds the dense weight, as ``nn.Linear``'s does: ``save_pretrained`` writes a normal checkpoint.
    def _save_to_state_dict(self, destination: Any, prefix: str, keep_vars: bool) -> None:
        destination[prefix + "weight"] = self.weight
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def _load_from_state_dict(self, state_dict: Any, prefix: str, local_metadata: Any, strict: bool,
                              missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str]) -> None:
        weight, bias = state_dict.get(prefix + "weight"), state_dict.get(prefix + "bias")
        missing_keys.extend(prefix + name for name, value in (("weight", weight), ("bias", bias))
                            if value is None and (name == "weight" or self.bias is not None))
        if weight is not None and tuple(weight.shape) != (self.out_features, self.in_features):
            error_msgs.append(f"size mismatch for {prefix}weight: {tuple(weight.shape)} in the state dict, "
                              f"{(self.out_features, self.in_features)} in the model")
            return
        with torch.no_grad():
            if weight is not None:
                self.packed = _pack(weight.to(torch.float32), BATCH_HINT)
            if bias is not None and self.bias is not None:
                self.bias.copy_(bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def can_pack(model: Any) -> bool:
    """Whether `pack_linears` applies: a float32 model on CPU, no unmerged adapter, and oneDNN's ops present."""
    if hasattr(model, "peft_config") or not torch.backends.mkldnn.is_available():
        return False
    if not all(hasattr(torch.ops.mkldnn, op) for op in ("_reorder_linear_weight", "_linear_pointwise")):
        return False
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
    return bool(linears) and all(m.weight.device.type == "cpu" and m.weight.dtype == torch.float32 for m in linears)


def _self_check() -> bool:
    """oneDNN's packed product agrees with ``F.linear`` here (a guard against a broken build)."""
    try:
        gen = torch.Generator().manual_seed(0)
        linear = torch.nn.Linear(96, 80)
        with torch.no_grad():
            linear.weight.copy_(torch.randn(80, 96, generator=gen))
            linear.bias.copy_(torch.randn(80, generator=gen))
            packed = PackedLinear(linear)
            for rows in (1, 5, 40):
                x = torch.randn(2, rows, 96, generator=gen)
                if not torch.allclose(packed(x), linear(x), rtol=1e-4, atol=1e-3):
                    return False
        return True
    except (RuntimeError, AttributeError, NotImplementedError) as exc:
        _log.info("oneDNN packed linear unavailable (%s); keeping F.linear", exc)
        return False


class _FileMappings:
    """This process's file-backed memory mappings (Linux ``/proc/self/maps``), to find mapped weights."""

    def __init__(self) -> None:
        self.ranges: list[tuple[int, int]] = []
        try:
            with open("/proc/self/maps") as f:
                for line in f:
                    fields = line.split(maxsplit=5)
                    if len(fields) == 6 and fields[4] != "0" and fields[5].strip().startswith("/"):
                        start, end = (int(part, 16) for part in fields[0].split("-"))
                        self.ranges.append((start, end))
        except OSError:
            pass

    def holds(self, tensor: Any) -> bool:
        start = tensor.data_ptr()
        end = start + tensor.numel() * tensor.element_size()
        return any(low <= start and end <= high for low, high in self.ranges)


def _page_out(tensor: Any) -> None:
    """Hand the whole pages under a file-mapped tensor back to the page cache (contents unchanged).

    They are also marked as read at random: a later read (the embedding looking up a row) then maps
    just its own page, not the 64 KB the kernel would otherwise map around it.
    """
    page = mmap.PAGESIZE
    start = -(-tensor.data_ptr() // page) * page
    end = (tensor.data_ptr() + tensor.numel() * tensor.element_size()) // page * page
    if _LIBC is not None and end > start:
        for advice in (_MADV_PAGEOUT, _MADV_RANDOM):  # advice only: an old kernel answers EINVAL, nothing breaks
            _LIBC.madvise(start, end - start, advice)


def pack_linears(model: Any, batch_hint: int = BATCH_HINT) -> int:
    """Replace the model's plain ``nn.Linear`` layers by `PackedLinear`; returns how many were packed.

    Call `can_pack` first. Packs nothing if oneDNN's product fails its self-check.
    """
    if not _self_check():
        return 0
    mapped = _FileMappings()
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    shared_ptr = embedding.weight.data_ptr() if embedding is not None else None
    count = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is not torch.nn.Linear:
                continue
            weight = child.weight
            if weight.data_ptr() == shared_ptr and not mapped.holds(weight):
                continue  # a tied head whose embedding is in memory: packing would hold the weight twice
            setattr(module, name, PackedLinear(child, batch_hint))
            count += 1
            if mapped.holds(weight):
                _page_out(weight)
    return count


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc's ``malloc_trim``; elsewhere nothing).

    glibc keeps freed heap memory for reuse. After a prefill, that is the activations of its forward
    passes: trimming once before decoding (about a millisecond) keeps them from staying resident on
    top of the key/value cache for the rest of the generation.
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
