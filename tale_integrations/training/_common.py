"""Values and file helpers shared by TALE-PT data preparation, training and the CLI.

Standard library only (nothing here imports torch): the training configs' base `TrainConfig`, the
per-step `StepInfo` and final `TrainResult`, the `DataStats` of a training set, and JSON / JSONL
helpers with errors that name the file and line at fault.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..core.checks import check_choice, check_flag, check_int, check_number
from ..core.errors import TaleTypeError
from ..core.files import atomic_write_text
from ..core.records import read_header

__all__ = ["DataStats", "StepInfo", "TrainConfig", "TrainResult", "budget_stats", "file_sha256", "is_search_file",
           "records_sha256", "write_jsonl"]

_SCHEDULERS = ("linear", "cosine", "constant")
_PRECISIONS = ("auto", "no", "bf16", "fp16")


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainConfig:
    """Hyperparameters shared by SFT and DPO (see `SFTConfig`, `DPOConfig` for their defaults).

    Attributes:
        epochs: Passes over the training records.
        learning_rate: Peak AdamW learning rate.
        batch_size: Effective batch (examples per optimizer step, all processes together).
        micro_batch_size: Examples per forward pass per process; ``batch_size`` must be a multiple of
            ``micro_batch_size x processes``; the rest is gradient accumulation.
        weight_decay: AdamW weight decay.
        max_grad_norm: Gradient clipping norm (None: no clipping).
        lr_scheduler: ``"linear"`` (decay to 0), ``"cosine"`` or ``"constant"``.
        warmup_ratio: Share of the steps spent warming the learning rate up from 0.
        lora_r / lora_alpha / lora_dropout / target_modules: The LoRA adapter (paper: r=8,
            alpha=32 on q_proj and v_proj; dropout is not stated, peft's default 0 is used).
        max_length: Longest prompt + target in tokens; longer examples are left out and counted.
        seed: Seeds the LoRA initialisation and the shuffling of every epoch.
        save_every: Optimizer steps between checkpoints (0: none until the end).
        keep_checkpoints: Newest checkpoints kept on disk.
        mixed_precision: ``"auto"`` (bf16 on a CUDA GPU that has it, else full precision), ``"no"``,
            ``"bf16"`` or ``"fp16"``.
        gradient_checkpointing: Trade compute for memory (large models).
    """

    epochs: int
    learning_rate: float
    batch_size: int = 16
    micro_batch_size: int = 4
    weight_decay: float
    max_grad_norm: float | None
    lr_scheduler: str = "linear"
    warmup_ratio: float = 0.0
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    max_length: int = 1024
    seed: int = 0
    save_every: int = 50
    keep_checkpoints: int = 2
    mixed_precision: str = "auto"
    gradient_checkpointing: bool = False

    #: Fields that do not change what is learned: a resumed run may change them.
    RUNTIME_FIELDS: ClassVar[frozenset[str]] = frozenset({"save_every", "keep_checkpoints", "gradient_checkpointing"})

    def __post_init__(self) -> None:
        name = type(self).__name__
        for f in ("epochs", "batch_size", "micro_batch_size", "lora_r", "lora_alpha", "max_length"):
            check_int(f"{name}.{f}", getattr(self, f), low=1)
        for f in ("save_every", "keep_checkpoints"):
            check_int(f"{name}.{f}", getattr(self, f), low=0)
        check_int(f"{name}.seed", self.seed)
        check_number(f"{name}.learning_rate", self.learning_rate, above=0)
        check_number(f"{name}.weight_decay", self.weight_decay, low=0)
        if self.max_grad_norm is not None:
            check_number(f"{name}.max_grad_norm", self.max_grad_norm, above=0)
        check_number(f"{name}.warmup_ratio", self.warmup_ratio, low=0, high=1)
        check_number(f"{name}.lora_dropout", self.lora_dropout, low=0, high=1)
        if self.batch_size % self.micro_batch_size:
            raise ValueError(f"{name}.batch_size ({self.batch_size}) must be a multiple of micro_batch_size "
                             f"({self.micro_batch_size}); the difference is made up by gradient accumulation")
        check_choice(f"{name}.lr_scheduler", self.lr_scheduler, _SCHEDULERS)
        check_choice(f"{name}.mixed_precision", self.mixed_precision, _PRECISIONS)
        modules = self.target_modules
        if isinstance(modules, str) or not modules or not all(isinstance(m, str) and m for m in modules):
            raise ValueError(f"{name}.target_modules must be a non-empty list of module names, got {modules!r}")
        object.__setattr__(self, "target_modules", tuple(modules))
        check_flag(f"{name}.gradient_checkpointing", self.gradient_checkpointing, error=TaleTypeError)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON-ready)."""
        d = dataclasses.asdict(self)
        d["target_modules"] = list(self.target_modules)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Inverse of `to_dict`; unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(data) - known):
            raise ValueError(f"{cls.__name__} has no field(s) {', '.join(unknown)}")
        return cls(**data)

    def identity(self) -> dict[str, Any]:
        """The fields that define what is learned (a resumed run must match them)."""
        return {k: v for k, v in self.to_dict().items() if k not in self.RUNTIME_FIELDS}


@dataclass(frozen=True, slots=True, kw_only=True)
class StepInfo:
    """Passed to training callbacks after every optimizer step (and its checkpoint, if any)."""

    step: int
    total_steps: int
    epoch: int
    loss: float
    learning_rate: float
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainResult:
    """A finished run: where its adapter is and how training went.

    Attributes:
        out_dir: The output folder (``HFGenerator(out_dir)`` loads base + adapter).
        method: ``"sft"`` or ``"dpo"``.
        steps: Optimizer steps of the whole run.
        resumed_from: The step this invocation started from (0: fresh; ``steps``: already complete).
        final_loss: Loss of the last optimizer step.
        loss_history: Loss of every optimizer step.
        metadata: The run's ``tale_pt.json``.
    """

    out_dir: Path
    method: str
    steps: int
    resumed_from: int
    final_loss: float | None
    loss_history: tuple[float, ...]
    metadata: dict[str, Any]

    @classmethod
    def from_metadata(cls, out_dir: Path, metadata: dict[str, Any], resumed_from: int) -> TrainResult:
        return cls(out_dir=out_dir, method=metadata["method"], steps=metadata["steps"], resumed_from=resumed_from,
                   final_loss=metadata.get("final_loss"), loss_history=tuple(metadata.get("loss_history", ())),
                   metadata=metadata)


def budget_stats(values: Iterable[int | None]) -> dict[str, float | int | None]:
    """count / min / median / mean / max of the known (non-None) values."""
    known = [v for v in values if v is not None]
    if not known:
        return {"count": 0, "min": None, "median": None, "mean": None, "max": None}
    return {"count": len(known), "min": min(known), "median": statistics.median(known),
            "mean": round(statistics.fmean(known), 2), "max": max(known)}


@dataclass(frozen=True, slots=True, kw_only=True)
class DataStats:
    """What went into a training set and what was left out, and why.

    Attributes:
        total: Records read (search records, or rows of a training file).
        used: Training records made.
        left_out: Count per reason (``no_budget``, ``vanilla_wrong``, ``identical_answers``...).
        budget: `budget_stats` of the optimal budgets used.
        target_tokens: `budget_stats` of the target (chosen) answers' token counts.
        vanilla_tokens: `budget_stats` of the vanilla answers' token counts.
    """

    total: int
    used: int
    left_out: dict[str, int] = field(default_factory=dict)
    budget: dict[str, Any] = field(default_factory=dict)
    target_tokens: dict[str, Any] = field(default_factory=dict)
    vanilla_tokens: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return dataclasses.asdict(self)

    def summary(self) -> str:
        """One line for humans."""
        out = ", ".join(f"{n} {reason}" for reason, n in sorted(self.left_out.items())) or "none"
        line = f"{self.used} of {self.total} records used (left out: {out})"
        if self.budget.get("count"):
            b = self.budget
            line += f"; optimal budget median {b['median']} (min {b['min']}, max {b['max']})"
        if self.target_tokens.get("count") and self.vanilla_tokens.get("count"):
            line += f"; target tokens mean {self.target_tokens['mean']} vs vanilla {self.vanilla_tokens['mean']}"
        return line


# -- files ------------------------------------------------------------------------------------


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is unreadable ({exc}); move the folder aside or pass a new --out") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a JSON object; move the folder aside or pass a new --out")
    return data


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_jsonl(path: str | os.PathLike[str], records: Iterable[Any]) -> Path:
    """Write records as JSONL, atomically (`core.files.atomic_write_text`: a record that fails to
    serialise leaves the old file as it was). Returns the path."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; pass a .jsonl file path")
    lines = [json.dumps(r.to_dict() if hasattr(r, "to_dict") else dict(r), ensure_ascii=False) + "\n"
             for r in records]
    return atomic_write_text(path, "".join(lines))


def jsonl_rows(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; clear errors for empty or malformed files."""
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; pass a JSONL file")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise ValueError(f"{path} is empty")
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}, line {n}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}, line {n}: expected a JSON object, got {type(row).__name__}")
        yield n, row


def is_search_file(path: str | os.PathLike[str]) -> bool:
    """Whether the file starts with a ``tale-search`` header line (written by `search_to_file`)."""
    header = read_header(path)
    return header is not None and header.get("kind") == "tale-search"


def records_sha256(records: Iterable[Any]) -> str:
    """Hex sha256 of records as canonical JSONL (what identifies in-memory training data)."""
    digest = hashlib.sha256()
    for r in records:
        digest.update((json.dumps(r.to_dict(), sort_keys=True, ensure_ascii=False) + "\n").encode())
    return digest.hexdigest()
