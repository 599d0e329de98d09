"""TALE-PT with LoRA SFT: teach a model to answer the budget-free question prompt the way it
answered under its searched optimal budget (TALE-PT, Han et al. 2024).

The loss covers the target tokens only: the answer and the end-of-turn token. Prompt and padding
positions carry the label -100 and are ignored (the reference scripts trained on them).
This module also holds what DPO reuses: tokenisation, LoRA model loading and run preparation; the
loop itself is `checkpoints.run`.

Usage::

    from tale_integrations.training import SFTConfig, train_sft

    result = train_sft("models/Llama-3.1-8B-Instruct", "search.jsonl", "runs/tale-pt-sft",
                       SFTConfig(micro_batch_size=2), merge=True)
    HFGenerator(result.out_dir)          # base + adapter, or HFGenerator(result.out_dir / "merged")

or ``tale train sft --search-file search.jsonl --model BASE --out DIR``. A killed run resumes from
its latest checkpoint when rerun with the same arguments.

Several GPUs or machines: the loop is plain `accelerate`, so launch the same command under it::

    accelerate launch --multi_gpu --num_processes 8 -m tale_integrations.cli train sft \\
        --search-file search.jsonl --model BASE --out DIR --micro-batch-size 2

(add ``--num_machines N --machine_rank R --main_process_ip HOST --main_process_port PORT`` on each
of several machines, with ``DIR`` on a shared file system; ``batch_size`` must be a multiple of
``micro_batch_size x processes``: here 16 = 2 x 8, so no accumulation.) Several CPU processes, to
try it without GPUs: ``ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 -m tale_integrations.cli
train sft ...``. A kill and rerun resumes under any of these, the effective batch unchanged.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._optional import require

torch = require("torch", extra="train", purpose="TALE-PT training")
transformers = require("transformers", extra="train", purpose="TALE-PT training")
peft = require("peft", extra="train", purpose="TALE-PT training")

from ._common import DataStats, StepInfo, TrainConfig, TrainResult, file_sha256, records_sha256  # noqa: E402
from .checkpoints import Job, RunDir, run_exclusive  # noqa: E402
from .data import SFTRecord, load_sft_data, records_stats  # noqa: E402

__all__ = [
    "IGNORE_INDEX", "SFTConfig", "answer_ids", "collate_sft", "encode_sft", "end_of_turn_id", "load_lora_model",
    "masked_lm_loss", "prompt_ids", "sft_loss", "train_sft",
]

#: The label of positions the loss ignores (prompt and padding).
IGNORE_INDEX = -100


@dataclass(frozen=True, slots=True, kw_only=True)
class SFTConfig(TrainConfig):
    """SFT hyperparameters; the defaults are the paper's (3 epochs, lr 1e-4, effective batch 16,
    weight decay 0.01, LoRA r=8 alpha=32 on q_proj/v_proj). Gradient clipping at 1.0 is ours (the
    paper states none for SFT). See `TrainConfig` for every field."""

    epochs: int = 3
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    max_grad_norm: float | None = 1.0


def encode_sft(tokenizer: Any, record: SFTRecord, eot: int) -> dict[str, list[int]]:
    """Token ids and labels of one example: the chat prompt (assistant turn opened), then the
    answer and ``eot``; the prompt's labels are `IGNORE_INDEX`."""
    prompt = prompt_ids(tokenizer, record.prompt)
    target = answer_ids(tokenizer, record.completion, eot)
    return {"input_ids": prompt + target, "labels": [IGNORE_INDEX] * len(prompt) + target}


def collate_sft(pad_id: int) -> Callable[[list[Mapping[str, list[int]]]], dict[str, Any]]:
    """A collate function: right padding with ``pad_id``, attention mask 0 and label -100 on padding."""

    def collate(examples: list[Mapping[str, list[int]]]) -> dict[str, Any]:
        ids = [e["input_ids"] for e in examples]
        return {
            "input_ids": pad_rows(ids, pad_id),
            "attention_mask": pad_rows([[1] * len(r) for r in ids], 0),
            "labels": pad_rows([e["labels"] for e in examples], IGNORE_INDEX),
        }

    return collate


def masked_lm_loss(logits: Any, labels: Any) -> tuple[Any, Any]:
    """(mean cross-entropy over the labelled positions, their count); position t predicts label t+1."""
    shifted = logits[:, :-1, :].float()
    targets = labels[:, 1:]
    count = (targets != IGNORE_INDEX).sum()
    total = torch.nn.functional.cross_entropy(
        shifted.reshape(-1, shifted.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return total / count.clamp(min=1), count


def sft_loss(model: Any, batch: Mapping[str, Any]) -> tuple[Any, dict[str, float]]:
    """The SFT loss of one micro-batch: mean cross-entropy over its target tokens only."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    loss, count = masked_lm_loss(logits, batch["labels"])
    return loss, {"target_tokens": float(count)}


def train_sft(
    model: str | os.PathLike[str] | None,
    data: str | os.PathLike[str] | Sequence[SFTRecord],
    out_dir: str | os.PathLike[str],
    config: SFTConfig | None = None,
    *,
    merge: bool = False,
    callbacks: Sequence[Callable[[StepInfo], None]] = (),
    progress: bool = True,
    wait: bool | float = False,
) -> TrainResult:
    """LoRA SFT of ``model`` on TALE-PT data; resumes a killed run, refuses a different one.

    Args:
        model: The base model folder (the model that was searched with), or None for the embedded
            SmolLM2-135M-Instruct.
        data: A search file (records without an accepted budget are left out and counted), an SFT
            JSONL file, or a list of `SFTRecord`.
        out_dir: Output folder: adapter (safetensors), tokenizer, ``tale_pt.json``, checkpoints while
            training, ``merged/`` with ``merge``. Must be new, empty, or hold this same run.
        config: Hyperparameters (default `SFTConfig()`, the paper's).
        merge: Also write merged weights to ``out_dir/merged`` (a plain model folder).
        callbacks: Called with a `StepInfo` after every optimizer step.
        progress: Show a progress bar.
        wait: Another trainer on ``out_dir``: False raises `RunLockedError` at once, True waits for
            it to finish, a number waits at most that many seconds.

    Raises:
        ValueError: unusable data (the message names the file and what was left out), bad
            hyperparameters, or no example fits ``max_length``.
        RunMismatchError: ``out_dir`` holds a different run (nothing is overwritten).
        RunLockedError: another trainer is writing ``out_dir`` (see ``wait``).
    """
    config = SFTConfig() if config is None else config
    if not isinstance(config, SFTConfig):
        raise TypeError(f"config must be an SFTConfig, got {type(config).__name__}")
    prep = prepare("sft", model, data, out_dir, config, load_sft_data, SFTRecord)
    return run_exclusive(
        prep.run_dir,
        lambda: make_job(prep, config, encode=encode_sft, length=lambda e: len(e["input_ids"]),
                         unit="training example (prompt + answer)", collate=collate_sft, loss_fn=sft_loss),
        merge=merge, callbacks=callbacks, progress=progress, wait=wait,
    )


# -- shared with DPO: tokenisation, model loading, run preparation ------------------------------


def prompt_ids(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> list[int]:
    """Chat-template ids with the assistant turn opened (what `HFGenerator.encode_chat` feeds the model)."""
    encoded = tokenizer.apply_chat_template([dict(m) for m in messages], add_generation_prompt=True, tokenize=True,
                                            return_dict=True)
    return list(encoded["input_ids"])


def end_of_turn_id(tokenizer: Any) -> int:
    """The token that closes an assistant turn: the special token the chat template writes right
    after the answer (``<|im_end|>``, ``<|eot_id|>``...), else the tokenizer's eos token."""
    probe = "TALEPROBE"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": probe}], tokenize=False
    )
    after = text[text.rfind(probe) + len(probe):] if probe in text else ""
    ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
    if ids and ids[0] in set(tokenizer.all_special_ids):
        return int(ids[0])
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no end-of-sequence token and its chat template closes no turn with a "
                         "special token; set tokenizer.eos_token")
    return int(tokenizer.eos_token_id)


def answer_ids(tokenizer: Any, text: str, eot: int) -> list[int]:
    """The target tokens of an answer: its text, then the end-of-turn token."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) + [eot]


def pad_rows(rows: Sequence[Sequence[int]], value: int) -> Any:
    """Right-pad integer rows into one long tensor."""
    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [value] * (width - len(r)) for r in rows], dtype=torch.long)


def resolve_base(model: Any) -> str:
    """The base model to train: a local folder (made absolute) or hub id; None = the embedded model."""
    from ..backends.embedded import embedded_model_path
    from ..backends.hf.loading import check_source

    if model is None:
        return str(embedded_model_path())
    source = check_source(model)
    if source.adapter is not None:
        raise ValueError(f"model={str(model)!r} is a LoRA adapter folder; pass the base model it was trained on "
                         "(named in its adapter_config.json), or merge it first")
    path = Path(source.base)
    return str(path.resolve()) if path.exists() else source.base


def resolve_precision(setting: str) -> str:
    """``"auto"`` → ``"bf16"`` on a CUDA GPU that supports it, else ``"no"``."""
    if setting != "auto":
        return setting
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def load_tokenizer(base: str) -> Any:
    tokenizer = transformers.AutoTokenizer.from_pretrained(base)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"the tokenizer of {base!r} has no chat template; TALE-PT trains chat models")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_lora_model(base: str, config: TrainConfig, precision: str) -> Any:
    """The base model with a fresh LoRA adapter (B = 0, so it starts equal to the base)."""
    from ..backends.hf.loading import load_checkpoint

    dtype = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    model, _ = load_checkpoint(base, None, device="cpu", dtype=dtype, merge=False, trust_remote_code=False)
    model.config.use_cache = False
    lora = peft.LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                           target_modules=list(config.target_modules), task_type="CAUSAL_LM")
    try:
        with warnings.catch_warnings():  # peft probes a deprecated transformers attribute
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            model = peft.get_peft_model(model, lora)
    except ValueError as exc:
        raise ValueError(f"target_modules={list(config.target_modules)} do not fit {base!r}: {exc}") from exc
    # HFGenerator(out_dir) and vLLM read the base from here: always the resolved path.
    model.peft_config["default"].base_model_name_or_path = base
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.train()
    return model


@dataclass(frozen=True, slots=True, kw_only=True)
class Prepared:
    """A run's data and output folder, checked before any weights load."""

    run_dir: RunDir
    base: str
    records: list[Any]
    stats: DataStats
    data_file: str | None
    data_sha256: str


def prepare(method: str, model: Any, data: Any, out_dir: Any, config: TrainConfig,
            load: Callable[[Any], tuple[list[Any], DataStats]], record_type: type) -> Prepared:
    """Read the data (a file path for ``load``, or ready records), resolve the base, check ``out_dir``;
    nothing is written and no weights load."""
    if isinstance(data, (str, os.PathLike)):
        records, stats = load(data)
        data_file, sha = str(Path(data).resolve()), file_sha256(data)
    else:
        if isinstance(data, (bytes, Mapping)) or not isinstance(data, Sequence):
            raise TypeError(f"data must be a file path or a list of records, got {type(data).__name__}")
        records = list(data)
        if not records:
            raise ValueError("data is an empty list; pass a search file, a training file or a list of records")
        if not all(isinstance(r, record_type) for r in records):
            raise TypeError(f"data must hold {record_type.__name__} values for {method.upper()}")
        stats, data_file, sha = records_stats(records), None, records_sha256(records)
    if out_dir is None or not isinstance(out_dir, (str, os.PathLike)):
        raise TypeError(f"out_dir must be a folder path, got {out_dir!r}")
    base = resolve_base(model)
    identity = {"kind": "tale-pt", "method": method, "base_model": base, "data_sha256": sha,
                "config": config.identity()}
    run_dir = RunDir(out_dir, identity)
    run_dir.check()
    return Prepared(run_dir=run_dir, base=base, records=records, stats=stats, data_file=data_file, data_sha256=sha)


def make_job(prep: Prepared, config: TrainConfig, *, encode: Callable[[Any, Any, int], dict[str, list[int]]],
             length: Callable[[dict[str, list[int]]], int], unit: str,
             collate: Callable[[int], Callable[..., dict[str, Any]]], loss_fn: Callable[..., Any]) -> Job:
    """The `checkpoints.Job` of a prepared run: its records encoded (``encode(tokenizer, record, eot)``),
    those longer than ``max_length`` (by ``length``) left out and counted, its metadata, precision and
    model factory. ``unit`` names one example in the error raised when none fits."""
    tokenizer = load_tokenizer(prep.base)
    eot = end_of_turn_id(tokenizer)
    encoded = [encode(tokenizer, r, eot) for r in prep.records]
    examples = [e for e in encoded if length(e) <= config.max_length]
    if not examples:
        raise ValueError(f"no {unit} fits max_length={config.max_length} tokens; raise max_length")
    too_long = len(encoded) - len(examples)
    method = prep.run_dir.identity["method"]
    precision = resolve_precision(config.mixed_precision)
    metadata = {
        "kind": "tale-pt", "method": method, "base_model": prep.base, "data_file": prep.data_file,
        "data_sha256": prep.data_sha256, "hyperparameters": config.to_dict(), "data_stats": prep.stats.to_dict(),
        "num_examples": len(examples), "left_out_too_long": too_long,
        "end_of_turn_token": tokenizer.convert_ids_to_tokens(eot),
    }
    return Job(method=method, base=prep.base, config=config, precision=precision,
               load_model=lambda: load_lora_model(prep.base, config, precision), examples=examples,
               collate=collate(tokenizer.pad_token_id),
               loss_fn=loss_fn, tokenizer=tokenizer, run_dir=prep.run_dir, metadata=metadata)
