"""The resumable TALE-PT training loop and the run folder it lives in: identity, periodic
checkpoints, resume after a kill, final outputs.

The loop (`run`) is written against `accelerate.Accelerator` only (``prepare``, ``accumulate``,
``backward``, ``clip_grad_norm_``, ``save_state`` / ``load_state``, ``skip_first_batches``), so the
same code runs on one CPU, one GPU, or several GPUs / machines under ``accelerate launch``: the
micro-batch is per process and the effective batch is ``micro_batch_size x accumulation steps x
processes``, kept equal to ``batch_size``. Several machines need a shared output folder.

Layout of an output folder::

    OUT/run.json                    what identifies the run (written first: method, base, data sha256,
                                    hyperparameters); a rerun must match it or is refused
    OUT/checkpoints/step-00000050/  accelerate state (optimizer, scheduler, RNG, step) + adapter/
    OUT/adapter_config.json         the final PEFT LoRA adapter (safetensors), its base model named by
    OUT/adapter_model.safetensors   absolute path, so ``HFGenerator(OUT)`` loads base + adapter at once
    OUT/tokenizer*.json ...         the tokenizer (unchanged from the base)
    OUT/merged/                     optional: merged weights + tokenizer, a plain model folder
    OUT/tale_pt.json                metadata, written last: its presence means the run is complete

Checkpoints, the final adapter and the merged weights are written to a temporary folder, fsynced
and renamed into place (`core.files.atomic_directory`), so a kill never leaves a half-written one
that a resume (or a loader) would pick up; ``tale_pt.json`` is written after them, in one step, and
`backends.hf.loading` refuses a run folder without it. Only the adapter weights are saved in a
checkpoint (the frozen base is never copied), via accelerate's save/load state hooks.

One trainer at a time: `run_exclusive` holds a `core.files.FileLock` on the output folder for the
whole training, so a second trainer on the same folder gets `RunLockedError` (or waits, with
``wait``) instead of deleting the first one's checkpoints. (The lock is taken on the main process,
in its machine's cache folder: it keeps out trainers on that machine.)
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._optional import require
from ..core.errors import RunLockedError
from ..core.files import FileLock, atomic_directory, atomic_write_json, fsync_dir, is_temporary
from ..core.records import RunMismatchError
from ..core.records import diff_summary as _diff

torch = require("torch", extra="train", purpose="TALE-PT training")
transformers = require("transformers", extra="train", purpose="TALE-PT training")
peft = require("peft", extra="train", purpose="TALE-PT training")
accelerate = require("accelerate", extra="train", purpose="TALE-PT training")
safetensors_torch = require("safetensors.torch", extra="train", purpose="TALE-PT training")
tqdm = require("tqdm", extra="train", purpose="TALE-PT progress bars")

from .. import __version__  # noqa: E402
from ..core.prompts import PROMPT_VERSION  # noqa: E402
from ._common import StepInfo, TrainConfig, TrainResult, read_json  # noqa: E402

__all__ = ["CHECKPOINTS_DIR", "METADATA_FILE", "RUN_FILE", "Job", "RunDir", "RunLockedError", "RunMismatchError",
           "finished", "install_adapter_hooks", "merge_adapter", "run", "run_exclusive"]

RUN_FILE = "run.json"
METADATA_FILE = "tale_pt.json"
CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "trainer_state.json"
ADAPTER_SUBDIR = "adapter"
MERGED_DIR = "merged"
#: The final adapter is built here (atomically), then its files are moved into the run folder.
_FINAL_STAGING = ".final"
_STEP_RE = re.compile(r"^step-(\d+)$")


class RunDir:
    """The output folder of one training run, bound to the run's identity.

    Args:
        path: The output folder (created if missing).
        identity: What defines the run (method, base model, data sha256, hyperparameters); JSON-ready.
    """

    def __init__(self, path: str | os.PathLike[str], identity: Mapping[str, Any]) -> None:
        self.path = Path(path).expanduser()
        self.identity = json.loads(json.dumps(dict(identity)))  # normalised, and proves it serialises

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    def check(self) -> None:
        """Refuse a folder that holds anything but this run; reads only, writes nothing.

        Raises:
            NotADirectoryError: the path is a file.
            FileExistsError: the folder holds files that are not a TALE-PT run.
            RunMismatchError: the folder holds a different run (the message lists what differs).
        """
        if self.path.exists() and not self.path.is_dir():
            raise NotADirectoryError(f"output {self.path} is a file; pass a folder (--out DIR)")
        # a folder holding only temporaries (a run killed while writing its first file) counts as empty
        if not self.path.is_dir() or all(is_temporary(entry) for entry in self.path.iterdir()):
            return
        run_file = self.path / RUN_FILE
        if not run_file.is_file():
            raise FileExistsError(
                f"output folder {self.path} is not empty and holds no TALE-PT run ({RUN_FILE} missing); pass a new "
                "or empty folder (--out). Nothing was written"
            )
        for source in (run_file, self.path / METADATA_FILE):
            if not source.is_file():
                continue
            data = read_json(source)
            old = data if source.name == RUN_FILE else data.get("identity", {})
            if old != self.identity:
                raise RunMismatchError(
                    f"output folder {self.path} holds a different TALE-PT run ({_diff(old, self.identity)}); pass a "
                    "new --out to start this run, or the same settings to resume that one. Nothing was overwritten"
                )

    def claim(self) -> None:
        """Create the folder and write ``run.json`` (call on the main process, after `check`)."""
        self.path.mkdir(parents=True, exist_ok=True)
        if not (self.path / RUN_FILE).is_file():
            atomic_write_json(self.path / RUN_FILE, self.identity)

    @property
    def complete(self) -> bool:
        """Whether the run finished (its ``tale_pt.json`` exists)."""
        return (self.path / METADATA_FILE).is_file()

    def metadata(self) -> dict[str, Any]:
        """The finished run's ``tale_pt.json``."""
        return read_json(self.path / METADATA_FILE)

    def write_metadata(self, metadata: Mapping[str, Any]) -> None:
        """Write ``tale_pt.json`` in one step: the mark of a complete run, so written after every output."""
        atomic_write_json(self.path / METADATA_FILE, {**metadata, "identity": self.identity})

    @contextlib.contextmanager
    def lock(self, *, wait: bool | float = False) -> Iterator[None]:
        """Hold this folder's `FileLock` (on the main process) while the block runs.

        Every process of an ``accelerate launch`` enters and leaves together: the main process's
        outcome is sent to the others, so a refused lock stops all of them.

        Raises:
            RunLockedError: another trainer holds the folder (and ``wait`` ran out).
        """
        state = _process_state()
        lock = FileLock(self.path, wait=wait, what=f"the TALE-PT output folder {self.path}")
        refused: list[str | None] = [None]
        if state.is_main_process:
            try:
                lock.acquire()
            except RunLockedError as exc:
                refused[0] = str(exc)
        accelerate.utils.broadcast_object_list(refused)
        if refused[0] is not None:
            raise RunLockedError(refused[0])
        try:
            yield
        finally:
            lock.release()

    # -- checkpoints ------------------------------------------------------------------------

    def latest_checkpoint(self) -> tuple[Path, dict[str, Any]] | None:
        """The newest complete checkpoint and its trainer state, or None."""
        if not self.checkpoints.is_dir():
            return None
        found = sorted(
            (int(m.group(1)), p) for p in self.checkpoints.iterdir()
            if (m := _STEP_RE.match(p.name)) and (p / STATE_FILE).is_file()
        )
        if not found:
            return None
        path = found[-1][1]
        return path, read_json(path / STATE_FILE)

    def save_checkpoint(self, accelerator: Any, step: int, state: Mapping[str, Any], *, keep: int) -> Path:
        """Save the accelerate state (adapter via the hooks) atomically; keep the newest ``keep``.

        The main process makes the temporary folder (`atomic_directory`) and names it to the others,
        which save their parts into it; it is renamed into place once all are done.
        """
        final = self.checkpoints / f"step-{step:08d}"
        with contextlib.ExitStack() as stack:
            staging = [str(stack.enter_context(atomic_directory(final))) if accelerator.is_main_process else None]
            accelerate.utils.broadcast_object_list(staging)
            accelerator.save_state(staging[0])
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                atomic_write_json(Path(staging[0]) / STATE_FILE, {**state, "step": step, "identity": self.identity})
        if accelerator.is_main_process:
            self._prune(keep)
        accelerator.wait_for_everyone()
        return final

    def _prune(self, keep: int) -> None:
        steps = sorted((int(m.group(1)), p) for p in self.checkpoints.iterdir() if (m := _STEP_RE.match(p.name)))
        for _, path in steps[:-keep] if keep > 0 else []:
            shutil.rmtree(path, ignore_errors=True)
        # temporary folders of a killed attempt (this process holds the run's lock: none is another's)
        for leftover in [*self.checkpoints.glob(".step-*.tmp"), *self.checkpoints.glob(".tmp-step-*")]:
            shutil.rmtree(leftover, ignore_errors=True)

    def load_checkpoint(self, accelerator: Any, path: Path, state: Mapping[str, Any]) -> None:
        """Restore the accelerate state of a checkpoint made by this run."""
        if state.get("identity") != self.identity:
            raise RunMismatchError(
                f"checkpoint {path} belongs to a different run ({_diff(state.get('identity', {}), self.identity)}); "
                "pass a new --out"
            )
        accelerator.load_state(str(path))

    def remove_checkpoints(self) -> None:
        shutil.rmtree(self.checkpoints, ignore_errors=True)

    # -- final outputs ----------------------------------------------------------------------

    def save_final(self, model: Any, tokenizer: Any, *, merge: bool) -> None:
        """Write the adapter (safetensors) and tokenizer, and merged weights when ``merge``.

        The adapter and tokenizer are built complete and fsynced in a temporary folder, then each
        file is renamed into the run folder (where ``HFGenerator(OUT)`` finds them): a kill leaves
        whole files, never cut ones, and no ``tale_pt.json``, so the rerun writes them again.
        """
        staged = self.path / _FINAL_STAGING
        _save_model(model, tokenizer, staged)
        for item in sorted(staged.iterdir()):
            os.replace(item, self.path / item.name)
        staged.rmdir()
        fsync_dir(self.path)
        if merge:
            _save_model(model.merge_and_unload(), tokenizer, self.path / MERGED_DIR)


def _save_model(model: Any, tokenizer: Any, target: Path) -> None:
    """Save weights (safetensors) and tokenizer as the folder ``target``, all at once (`atomic_directory`)."""
    with atomic_directory(target) as staging:
        model.save_pretrained(str(staging), safe_serialization=True)
        tokenizer.save_pretrained(str(staging))


def merge_adapter(out_dir: str | os.PathLike[str]) -> Path:
    """Merge a finished run's adapter into its base and write ``OUT/merged`` (config, safetensors, tokenizer).

    Returns:
        The merged folder, loadable as a plain model (``HFGenerator(OUT / "merged")``, vLLM ``--model``).
    """
    from ..backends.hf.loading import check_source, load_checkpoint

    out = Path(out_dir)
    source = check_source(None, out)
    model, tokenizer = load_checkpoint(source.base, source.adapter, device="cpu", dtype="auto", merge=True,
                                       trust_remote_code=False)  # "auto": the base's own dtype
    _save_model(model, tokenizer, out / MERGED_DIR)
    return out / MERGED_DIR


def install_adapter_hooks(accelerator: Any) -> None:
    """Make ``accelerator.save_state`` / ``load_state`` save and restore only the LoRA adapter.

    Without the hooks accelerate would copy the whole model (frozen base included) into every
    checkpoint. The adapter goes to ``<checkpoint>/adapter`` in PEFT's own format (safetensors).
    """

    def save_hook(models: list[Any], weights: list[Any], output_dir: str) -> None:
        if accelerator.is_main_process:
            for i, model in enumerate(models):
                folder = Path(output_dir) / (ADAPTER_SUBDIR if i == 0 else f"{ADAPTER_SUBDIR}_{i}")
                accelerator.unwrap_model(model).save_pretrained(str(folder), safe_serialization=True)
        weights.clear()

    def load_hook(models: list[Any], input_dir: str) -> None:
        for i, model in enumerate(list(models)):
            folder = Path(input_dir) / (ADAPTER_SUBDIR if i == 0 else f"{ADAPTER_SUBDIR}_{i}")
            state = safetensors_torch.load_file(str(folder / "adapter_model.safetensors"))
            result = peft.set_peft_model_state_dict(accelerator.unwrap_model(model), state)
            if getattr(result, "unexpected_keys", None):
                raise ValueError(f"checkpoint {input_dir}: adapter weights do not fit the model "
                                 f"({len(result.unexpected_keys)} unexpected keys)")
        models.clear()

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


class _EpochSampler(torch.utils.data.Sampler):
    """A fresh permutation per epoch from (seed, epoch) only: no RNG state to save for resume."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):  # noqa: ANN204
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


# -- the loop --------------------------------------------------------------------------------

#: ``loss_fn(model, batch) -> (loss, metrics)``: ``model`` is the prepared (possibly wrapped) model.
LossFn = Callable[[Any, Mapping[str, Any]], tuple[Any, dict[str, float]]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """Everything `run` needs beyond the loop itself (built by `train_sft` / `train_dpo`)."""

    method: str
    base: str
    config: TrainConfig
    precision: str
    load_model: Callable[[], Any]
    examples: list[dict[str, Any]]
    collate: Callable[[list[dict[str, Any]]], dict[str, Any]]
    loss_fn: LossFn
    tokenizer: Any
    run_dir: RunDir
    metadata: dict[str, Any]


def _process_state() -> Any:
    """The process state `accelerate launch` set up (ACCELERATE_USE_CPU: several CPU processes)."""
    return accelerate.PartialState(cpu=accelerate.utils.parse_flag_from_env("ACCELERATE_USE_CPU"))


def run_exclusive(run_dir: RunDir, make_job: Callable[[], Job], *, merge: bool,
                  callbacks: Sequence[Callable[[StepInfo], None]], progress: bool,
                  wait: bool | float = False) -> TrainResult:
    """Holding the run folder's lock (`RunDir.lock`): the result of an already complete run, else
    `run` of ``make_job()`` (a fresh run, or the resume of a killed one).

    The folder is checked again once the lock is held: a trainer that waited may find it complete,
    or claimed by a different run.
    """
    with run_dir.lock(wait=wait):
        run_dir.check()
        if (done := finished(run_dir, merge)) is not None:
            return done
        return run(make_job(), merge=merge, callbacks=callbacks, progress=progress)


def finished(run_dir: RunDir, merge: bool) -> TrainResult | None:
    """The result of an already complete run (merging now if asked and not done), else None."""
    if not run_dir.complete:
        return None
    if run_dir.checkpoints.exists() and _process_state().is_main_process:
        run_dir.remove_checkpoints()  # a kill landed after the run finished, while its checkpoints were removed
    if merge and not (run_dir.path / MERGED_DIR).is_dir():
        state = _process_state()
        if state.is_main_process:
            merge_adapter(run_dir.path)
            run_dir.write_metadata({**run_dir.metadata(), "merged": True})
        state.wait_for_everyone()
    metadata = run_dir.metadata()
    return TrainResult.from_metadata(run_dir.path, metadata, resumed_from=metadata["steps"])


def run(job: Job, *, merge: bool, callbacks: Sequence[Callable[[StepInfo], None]], progress: bool) -> TrainResult:
    """Train (or resume) the job, then write the adapter, tokenizer, metadata and optional merge."""
    config, run_dir, precision = job.config, job.run_dir, job.precision
    accelerator = accelerate.Accelerator(mixed_precision=precision, step_scheduler_with_optimizer=False)
    per_step = config.micro_batch_size * accelerator.num_processes
    if config.batch_size % per_step:
        raise ValueError(f"batch_size ({config.batch_size}) must be a multiple of micro_batch_size x processes "
                         f"({config.micro_batch_size} x {accelerator.num_processes})")
    accum = config.batch_size // per_step
    accelerator.gradient_accumulation_steps = accum
    if accelerator.is_main_process:
        run_dir.claim()
    accelerator.wait_for_everyone()
    accelerate.utils.set_seed(config.seed)
    model = job.load_model()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    loader = accelerator.prepare(torch.utils.data.DataLoader(
        job.examples, batch_size=config.micro_batch_size, sampler=_EpochSampler(len(job.examples), config.seed),
        collate_fn=job.collate,
    ))
    steps_per_epoch = math.ceil(len(loader) / accum)  # len(loader): micro-batches of this process
    total = steps_per_epoch * config.epochs
    scheduler = transformers.get_scheduler(config.lr_scheduler, optimizer,
                                           num_warmup_steps=int(config.warmup_ratio * total),
                                           num_training_steps=total)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    install_adapter_hooks(accelerator)

    step, history = 0, []
    if latest := run_dir.latest_checkpoint():
        path, state = latest
        run_dir.load_checkpoint(accelerator, path, state)
        step, history = int(state["step"]), list(state.get("loss_history", []))
        accelerator.print(f"resuming {run_dir.path} from checkpoint step {step} of {total}")
    resumed_from = step
    started = time.perf_counter()
    bar = tqdm.tqdm(total=total, initial=step, desc=f"TALE-PT {job.method}", unit="step",
                    disable=not (progress and accelerator.is_local_main_process))
    micro: list[Any] = []
    sums: dict[str, float] = {}
    skip = (step % steps_per_epoch) * accum
    for epoch in range(step // steps_per_epoch, config.epochs):
        loader.set_epoch(epoch)
        batches = accelerator.skip_first_batches(loader, skip) if skip else loader
        skip = 0
        for batch in batches:
            with accelerator.accumulate(model):
                loss, metrics = job.loss_fn(model, batch)
                accelerator.backward(loss)
                micro.append(loss.detach().float())
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                if not accelerator.sync_gradients:
                    continue
                if config.max_grad_norm is not None:
                    accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            step += 1
            value = float(accelerator.reduce(torch.stack(micro).mean(), reduction="mean"))
            means = {k: v / len(micro) for k, v in sums.items()}
            micro, sums = [], {}
            history.append(round(value, 6))
            lr = float(scheduler.get_last_lr()[0])
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2e}")
            if config.save_every and step % config.save_every == 0 and step < total:
                run_dir.save_checkpoint(accelerator, step, {"epoch": epoch, "loss_history": history},
                                        keep=config.keep_checkpoints)
            info = StepInfo(step=step, total_steps=total, epoch=epoch, loss=value, learning_rate=lr, metrics=means)
            for callback in callbacks:
                callback(info)
    bar.close()
    accelerator.wait_for_everyone()
    metadata = {
        **job.metadata,
        "steps": total, "epochs": config.epochs, "steps_per_epoch": steps_per_epoch,
        "gradient_accumulation_steps": accum, "num_processes": accelerator.num_processes, "precision": precision,
        "final_loss": history[-1] if history else None,
        "last_epoch_loss": round(sum(history[-steps_per_epoch:]) / len(history[-steps_per_epoch:]), 6) if history
        else None,
        "loss_history": history, "resumed_from": resumed_from,
        "train_seconds": round(time.perf_counter() - started, 1),
        "merged": merge, "prompt_version": PROMPT_VERSION, "tale_integrations_version": __version__,
    }
    if accelerator.is_main_process:
        run_dir.save_final(accelerator.unwrap_model(model), job.tokenizer, merge=merge)
        run_dir.write_metadata(metadata)
        run_dir.remove_checkpoints()
    accelerator.wait_for_everyone()
    metadata["identity"] = run_dir.identity
    return TrainResult.from_metadata(run_dir.path, metadata, resumed_from=resumed_from)
