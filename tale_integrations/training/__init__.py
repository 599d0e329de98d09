"""TALE-PT: search records → SFT / DPO records; LoRA SFT and DPO; checkpoints, resume and merge.

Data handling (`tale_integrations.training.data`) needs only the standard library; training needs
the ``train`` extra (``pip install "tale-integrations[train]"``: torch, transformers, peft,
accelerate, tqdm) and is imported on first use of its names::

    from tale_integrations.training import SFTConfig, train_sft, build_sft_records

The command line: ``tale search`` (optimal budgets), ``tale train sft`` and ``tale train dpo``.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._common import StepInfo, TrainResult
from .data import (
    DataStats,
    DPORecord,
    SFTRecord,
    build_dpo_records,
    build_sft_records,
    load_dpo_data,
    load_questions,
    load_sft_data,
    split_by_hash,
)

__all__ = [
    "DPOConfig", "DPORecord", "DataStats", "SFTConfig", "SFTRecord", "StepInfo", "TrainResult", "build_dpo_records",
    "build_sft_records", "load_dpo_data", "load_questions", "load_sft_data", "merge_adapter", "split_by_hash",
    "train_dpo", "train_sft",
]

_LAZY = {
    "SFTConfig": "sft", "train_sft": "sft", "DPOConfig": "dpo", "train_dpo": "dpo",
    "merge_adapter": "checkpoints",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
