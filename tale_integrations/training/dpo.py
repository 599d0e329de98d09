"""TALE-PT with DPO: prefer the model's optimal-budget answer (chosen) over its vanilla CoT answer
(rejected) for the budget-free question prompt (TALE-PT, Han et al. 2024).

The reference model is the policy itself with its LoRA adapter disabled (``with
model.disable_adapter():``), so no second copy of the base is held in memory. The adapter's B
matrices start at zero, so at step 0 the policy equals the reference and the loss is exactly log 2.

    loss = -log sigmoid(beta * ((log pi(c) - log ref(c)) - (log pi(r) - log ref(r))))

where log pi(y) sums the answer's token log-probabilities (end-of-turn token included; prompt and
padding excluded). ``tale train dpo --search-file S.jsonl --model BASE --out DIR``; under several
GPUs or machines, ``accelerate launch ... -m tale_integrations.cli train dpo ...`` (see `sft`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .._optional import require

torch = require("torch", extra="train", purpose="TALE-PT training")
accelerate = require("accelerate", extra="train", purpose="TALE-PT training")

from ..core.checks import check_number  # noqa: E402
from ._common import StepInfo, TrainConfig, TrainResult  # noqa: E402
from .checkpoints import run_exclusive  # noqa: E402
from .data import DPORecord, load_dpo_data  # noqa: E402
from .sft import (  # noqa: E402
    IGNORE_INDEX,
    answer_ids,
    make_job,
    pad_rows,
    prepare,
    prompt_ids,
)

__all__ = ["DPOConfig", "collate_dpo", "dpo_batch_loss", "dpo_loss", "encode_dpo", "sequence_logps", "train_dpo"]


@dataclass(frozen=True, slots=True, kw_only=True)
class DPOConfig(TrainConfig):
    """DPO hyperparameters; the defaults are the paper's (2 epochs, lr 3e-5, effective batch 16,
    weight decay 0.001, beta 0.5, max grad norm 5.0, LoRA r=8 alpha=32 on q_proj/v_proj).

    Attributes:
        beta: Strength of the KL anchor to the reference (the adapter-disabled base).
    """

    epochs: int = 2
    learning_rate: float = 3e-5
    weight_decay: float = 0.001
    max_grad_norm: float | None = 5.0
    beta: float = 0.5

    def __post_init__(self) -> None:
        TrainConfig.__post_init__(self)
        check_number("DPOConfig.beta", self.beta, above=0)


def encode_dpo(tokenizer: Any, record: DPORecord, eot: int) -> dict[str, list[int]]:
    """Prompt ids and the two answers' target ids (each ending with ``eot``)."""
    return {
        "prompt": prompt_ids(tokenizer, record.prompt),
        "chosen": answer_ids(tokenizer, record.chosen, eot),
        "rejected": answer_ids(tokenizer, record.rejected, eot),
    }


def _pair_length(pair: Mapping[str, list[int]]) -> int:
    """The longest row an encoded pair makes: its prompt and its longer answer."""
    return len(pair["prompt"]) + max(len(pair["chosen"]), len(pair["rejected"]))


def collate_dpo(pad_id: int) -> Callable[[list[Mapping[str, list[int]]]], dict[str, Any]]:
    """A collate function: the chosen rows of the batch, then its rejected rows, right-padded; labels
    are -100 on prompt and padding."""

    def collate(examples: list[Mapping[str, list[int]]]) -> dict[str, Any]:
        rows, labels = [], []
        for side in ("chosen", "rejected"):
            for e in examples:
                rows.append(e["prompt"] + e[side])
                labels.append([IGNORE_INDEX] * len(e["prompt"]) + e[side])
        return {
            "input_ids": pad_rows(rows, pad_id),
            "attention_mask": pad_rows([[1] * len(r) for r in rows], 0),
            "labels": pad_rows(labels, IGNORE_INDEX),
        }

    return collate


def sequence_logps(model: Any, input_ids: Any, attention_mask: Any, labels: Any) -> Any:
    """Per row, the summed log-probability of the labelled tokens (the answer and end-of-turn)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1, :].float()
    targets = labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    )
    return -nll.view(targets.shape).sum(dim=-1)


def dpo_loss(policy_chosen: Any, policy_rejected: Any, ref_chosen: Any, ref_rejected: Any, beta: float
             ) -> tuple[Any, Any]:
    """(mean DPO loss, per-example margins ``(pi_c - ref_c) - (pi_r - ref_r)``)."""
    margins = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return -torch.nn.functional.logsigmoid(beta * margins).mean(), margins


def dpo_batch_loss(model: Any, batch: Mapping[str, Any], beta: float) -> tuple[Any, dict[str, float]]:
    """The DPO loss of one collated micro-batch; the reference pass runs with the adapter disabled."""
    args = (batch["input_ids"], batch["attention_mask"], batch["labels"])
    peft_model = accelerate.utils.extract_model_from_parallel(model)
    with torch.no_grad(), peft_model.disable_adapter():
        reference = sequence_logps(peft_model, *args)
    policy = sequence_logps(model, *args)
    half = policy.shape[0] // 2
    loss, margins = dpo_loss(policy[:half], policy[half:], reference[:half], reference[half:], beta)
    rewards = beta * (policy.detach() - reference)
    return loss, {
        "margin": float(margins.detach().mean()),
        "accuracy": float((margins.detach() > 0).float().mean()),
        "chosen_reward": float(rewards[:half].mean()),
        "rejected_reward": float(rewards[half:].mean()),
    }


def train_dpo(
    model: str | os.PathLike[str] | None,
    data: str | os.PathLike[str] | Sequence[DPORecord],
    out_dir: str | os.PathLike[str],
    config: DPOConfig | None = None,
    *,
    merge: bool = False,
    callbacks: Sequence[Callable[[StepInfo], None]] = (),
    progress: bool = True,
    wait: bool | float = False,
) -> TrainResult:
    """LoRA DPO of ``model`` on TALE-PT preference pairs; resumes a killed run, refuses a different one.

    Args:
        model: The base model folder (the one that was searched with), or None for the embedded model.
        data: A search file (left out and counted: no accepted budget, wrong vanilla answer,
            identical answers), a DPO JSONL file, or a list of `DPORecord`.
        out_dir, merge, callbacks, progress, wait: As for `train_sft`.
        config: Hyperparameters (default `DPOConfig()`, the paper's).
    """
    config = DPOConfig() if config is None else config
    if not isinstance(config, DPOConfig):
        raise TypeError(f"config must be a DPOConfig, got {type(config).__name__}")
    prep = prepare("dpo", model, data, out_dir, config, load_dpo_data, DPORecord)
    beta = config.beta
    return run_exclusive(
        prep.run_dir,
        lambda: make_job(prep, config, encode=encode_dpo, length=_pair_length,
                         unit="preference pair (prompt + longer answer)", collate=collate_dpo,
                         loss_fn=lambda m, b: dpo_batch_loss(m, b, beta)),
        merge=merge, callbacks=callbacks, progress=progress, wait=wait,
    )
