"""CPU matrix products: ``F.linear`` vs oneDNN with the weight packed once (`PackedLinear`), side by side.

The shapes of the embedded SmolLM2-135M (576 hidden, 1,536 MLP, 49,152-word head), at 1 row (one
sequence decoding), 16 rows (a batch decoding) and 256 rows (a prefill pass). The weights are cycled
through 30 distinct copies (2 for the head), so each product reads its weight from memory, as in a
real decoding step, not from cache.

    python benchmarks/cpu_linear.py
"""

from __future__ import annotations

import os
import platform
import time

import torch
import torch.nn.functional as F

from tale_integrations.backends.hf.cpu_packing import PackedLinear, can_pack

SHAPES = [("576 -> 576 (attention q/o)", 576, 576), ("576 -> 1536 (MLP up/gate)", 576, 1536),
          ("1536 -> 576 (MLP down)", 1536, 576), ("576 -> 49152 (output head)", 576, 49152)]


def per_call_ms(calls, repeats: int) -> float:
    for call in calls:
        call()
    start = time.perf_counter()
    for _ in range(repeats):
        for call in calls:
            call()
    return (time.perf_counter() - start) / repeats / len(calls) * 1e3


def main() -> None:
    if not can_pack(torch.nn.Sequential(torch.nn.Linear(2, 2))):
        raise SystemExit("this PyTorch build has no oneDNN packed linear")
    torch.manual_seed(0)
    print(f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"{'product':<28} {'rows':>5} {'F.linear ms':>12} {'GFLOP/s':>8} {'packed ms':>10} {'GFLOP/s':>8} {'speed-up':>9}")
    with torch.inference_mode():
        for name, k, n in SHAPES:
            copies = 2 if n > 10_000 else 30
            linears = [torch.nn.Linear(k, n, bias=False) for _ in range(copies)]
            packed = [PackedLinear(linear) for linear in linears]
            for rows in (1, 16, 256):
                x = torch.randn(rows, k)
                repeats = max(2, int(3e9 / (2 * max(rows, 16) * k * n * copies)))
                plain = per_call_ms([lambda w=lin.weight: F.linear(x, w) for lin in linears], repeats)
                fast = per_call_ms([lambda p=p: p(x) for p in packed], repeats)
                flop = 2 * rows * k * n / 1e6
                print(f"{name:<28} {rows:>5} {plain:>12.3f} {flop / plain:>8.0f} {fast:>10.3f} {flop / fast:>8.0f} "
                      f"{plain / fast:>8.2f}x")


if __name__ == "__main__":
    main()
