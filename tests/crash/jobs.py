"""The three resumable jobs under test, each small enough to run in about a second on a tiny model:
the budget search (`tale search`), an evaluation with its report (`tale eval`) and TALE-PT SFT with
a checkpoint after every step (`tale train sft`).

Inputs are written once per session by `write_inputs`: a tiny random "chooser" model
(`tiny_models.build_chooser_model`, whose answers are right or wrong and of varied length by
question and budget, so the search takes a different number of steps per question), twelve
questions, and a search file to train on.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

from crash.harness import Job, check_records, read_records

SEARCH_FILE = "search.jsonl"
RUN = "run"


def write_inputs(folder: Path) -> dict[str, Path]:
    """The tiny model folder, the questions and the training search file under ``folder``."""
    from tiny_models import build_chooser_model, build_tiny_tokenizer

    from tale_integrations.core.prompts import PROMPT_VERSION

    tokenizer = build_tiny_tokenizer()
    model_dir = folder / "chooser"
    build_chooser_model(tokenizer).save_pretrained(model_dir, safe_serialization=True)
    tokenizer.save_pretrained(model_dir)
    questions = folder / "questions.jsonl"
    rows = [{"id": f"q{i:02d}", "question": f"What is {i} plus {3 * i}?", "answer": 7 if i % 3 == 0 else 40}
            for i in range(12)]
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    search = folder / "train-search.jsonl"
    header = {"kind": "tale-search", "model": "chooser", "mode": "greedy", "counter": "usage", "max_tokens": 32,
              "temperature": None, "prompt_version": PROMPT_VERSION}
    records = [{
        "id": f"t{i}", "question": f"What is {i} times {i + 2}?", "gold": "40", "format": "gsm8k", "status": "found",
        "vanilla_answer": "7 7 7 [[40]] STOP", "vanilla_tokens": 20, "optimal_budget": 16,
        "optimal_answer": "[[40]] 7 STOP" if i % 2 else "7 [[40]]", "optimal_tokens": 4,
        "trace": [{"budget": None, "tokens": 20, "correct": True, "accepted": True}], "mode": "greedy",
        "counter": "usage"} for i in range(6)]
    search.write_text("".join(json.dumps(r) + "\n" for r in [{"header": header}, *records]), encoding="utf-8")
    return {"model": model_dir, "questions": questions, "search": search}


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AssertionError(f"{path.name} is unreadable: {exc}") from None


class SearchJob(Job):
    """``tale search``: 12 questions in waves of 4, elasticity mode (accept while correct), so each
    question takes 1 to 6 steps and records land at many moments."""

    name = "search"

    def __init__(self, inputs: dict[str, Path]) -> None:
        self.inputs = inputs

    def argv(self, folder: Path) -> list[str]:
        return ["search", "--dataset", str(self.inputs["questions"]), "--model", str(self.inputs["model"]),
                "--out", str(folder / SEARCH_FILE), "--max-tokens", "32", "--batch-size", "4", "--wave", "4",
                "--mode", "elasticity", "--device", "cpu", "--quiet"]

    def record_files(self, folder: Path) -> list[Path]:
        return [folder / SEARCH_FILE]

    def progress(self, event: str) -> bool:
        return event.endswith(".jsonl [os.write]")  # a record appended

    def check_partial(self, folder: Path, reference: Path) -> str:
        path = folder / SEARCH_FILE
        if not path.exists():
            return "no search file yet"
        return f"{check_records(path, reference / SEARCH_FILE, complete=False)} records"

    def compare(self, folder: Path, reference: Path) -> list[str]:
        # Search records hold no timing or other run-dependent field: all of each must match.
        check_records(folder / SEARCH_FILE, reference / SEARCH_FILE, complete=True)
        return leftovers(folder)


class EvalJob(Job):
    """``tale eval``: three methods (vanilla, TALE-EP with its estimator call, fixed budget) over
    the 12 questions in chunks of 2, then the report (Markdown, JSON summary, plot)."""

    name = "eval"

    def __init__(self, inputs: dict[str, Path]) -> None:
        self.inputs = inputs

    def argv(self, folder: Path) -> list[str]:
        return ["eval", "--dataset", str(self.inputs["questions"]), "--model", str(self.inputs["model"]),
                "--out", str(folder / RUN), "--methods", "vanilla,tale-ep,fixed:8", "--max-tokens", "32",
                "--batch-size", "2", "--device", "cpu", "--no-progress"]

    def record_files(self, folder: Path) -> list[Path]:
        return sorted((folder / RUN / "results").glob("*.jsonl"))

    def progress(self, event: str) -> bool:
        return event.endswith(".jsonl [os.write]")  # a record appended

    def check_partial(self, folder: Path, reference: Path) -> str:
        run, ref = folder / RUN, reference / RUN
        counts = []
        for path in self.record_files(folder):
            held = check_records(path, ref / "results" / path.name, complete=False)
            counts.append(f"{path.stem.split('__')[1]} {held}")
        if (run / "run.json").exists():
            _json(run / "run.json")  # written atomically: never half there
        # The report is written once every record is in, so any report file there is the final one,
        # whole (each is written atomically).
        report = [name for name in REPORT_FILES if (run / name).exists()]
        for name in report:
            _same_report_file(run, ref, name)
        return (", ".join(counts) or "no results file yet") + (f"; report: {', '.join(report)}" if report else "")

    def compare(self, folder: Path, reference: Path) -> list[str]:
        run, ref = folder / RUN, reference / RUN
        names = sorted(p.name for p in (run / "results").glob("*.jsonl"))
        expected = sorted(p.name for p in (ref / "results").glob("*.jsonl"))
        assert names == expected, f"results files {names} != {expected}"
        for name in names:
            # Evaluation records hold no timing field either: compared whole.
            check_records(run / "results" / name, ref / "results" / name, complete=True)
        manifest, ref_manifest = _json(run / "run.json"), _json(ref / "run.json")
        manifest.pop("updated"), ref_manifest.pop("updated")  # the time of the last (re)start
        assert manifest == ref_manifest, f"run.json differs: {manifest} != {ref_manifest}"
        files = sorted(p.name for p in run.iterdir() if p.is_file() and not _temporary(Path(p.name)))
        assert files == sorted(p.name for p in ref.iterdir() if p.is_file()), f"run folder files {files} differ"
        for name in REPORT_FILES:
            _same_report_file(run, ref, name)
        return leftovers(run)


#: What `tale eval` writes after the records (without --no-report).
REPORT_FILES = ("report.md", "summary.json", "accuracy_tokens.png")


def _same_report_file(run: Path, ref: Path, name: str) -> None:
    """A report file must equal the uninterrupted run's, but for the run folder it names."""
    if name.endswith(".png"):
        assert (run / name).read_bytes() == (ref / name).read_bytes(), f"{name} differs"
        return
    text = (run / name).read_text(encoding="utf-8").replace(str(run), "RUN")
    ref_text = (ref / name).read_text(encoding="utf-8").replace(str(ref), "RUN")
    if text != ref_text:
        diff = difflib.unified_diff(ref_text.splitlines(), text.splitlines(), "uninterrupted", "this", lineterm="")
        raise AssertionError(f"{name} differs:\n" + "\n".join(list(diff)[:40]))


class TrainJob(Job):
    """``tale train sft`` on 6 examples: 2 epochs of 3 optimizer steps (2 micro-batches each), a
    checkpoint after every step (the newest 2 kept), then the adapter and the merged model."""

    name = "train"
    #: tale_pt.json fields that describe the run rather than the result.
    RUN_DEPENDENT = ("train_seconds", "resumed_from")

    def __init__(self, inputs: dict[str, Path]) -> None:
        self.inputs = inputs

    def argv(self, folder: Path) -> list[str]:
        return ["train", "sft", "--search-file", str(self.inputs["search"]), "--model", str(self.inputs["model"]),
                "--out", str(folder / RUN), "--epochs", "2", "--batch-size", "2", "--micro-batch-size", "1",
                "--save-every", "1", "--keep-checkpoints", "2", "--lr", "1e-2", "--mixed-precision", "no",
                "--merge", "--quiet"]

    def progress(self, event: str) -> bool:
        return event.startswith(f"{RUN}/checkpoints/")  # the first checkpoint being saved

    def check_partial(self, folder: Path, reference: Path) -> str:
        from safetensors.torch import load_file

        run = folder / RUN
        if not run.exists():
            return "no output folder yet"
        if (run / "run.json").exists():
            _json(run / "run.json")
        if (run / "tale_pt.json").exists():  # complete: what a loader reads must be whole
            _json(run / "tale_pt.json")
            load_file(run / "adapter_model.safetensors")
            if (run / "merged").exists():
                load_file(run / "merged" / "model.safetensors")
            return "complete"
        # What a resume loads: the newest checkpoint with a trainer state (older ones may be half
        # deleted by the pruning, which a resume never reads).
        steps = sorted(int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("step-*")
                       if (p / "trainer_state.json").exists()) if (run / "checkpoints").is_dir() else []
        if steps:
            newest = run / "checkpoints" / f"step-{steps[-1]:08d}"
            assert _json(newest / "trainer_state.json")["step"] == steps[-1]
            for part in ("adapter/adapter_model.safetensors", "optimizer.bin", "scheduler.bin"):
                assert (newest / part).is_file(), f"the newest checkpoint {newest.name} has no {part}"
            load_file(newest / "adapter" / "adapter_model.safetensors")
        return f"checkpoints {steps}"

    def compare(self, folder: Path, reference: Path) -> list[str]:
        run, ref = folder / RUN, reference / RUN
        notes = leftovers(run)
        if (run / "checkpoints").exists():
            notes.append("a completed run kept its checkpoints/ folder (killed while removing it after writing "
                         "tale_pt.json; the rerun found the run complete and left it)")
        files = {p.relative_to(run) for p in run.rglob("*")
                 if p.is_file() and "checkpoints" not in p.parts and not _temporary(p.relative_to(run))}
        expected = {p.relative_to(ref) for p in ref.rglob("*") if p.is_file()}
        assert files == expected, f"files differ: extra {sorted(map(str, files - expected))}, missing " \
                                  f"{sorted(map(str, expected - files))}"
        metadata, ref_metadata = _json(run / "tale_pt.json"), _json(ref / "tale_pt.json")
        for key in self.RUN_DEPENDENT:
            metadata.pop(key), ref_metadata.pop(key)
        assert metadata == ref_metadata, "tale_pt.json differs: " + str(
            {k: (metadata.get(k), ref_metadata.get(k)) for k in set(metadata) | set(ref_metadata)
             if metadata.get(k) != ref_metadata.get(k)})
        for name in sorted(files - {Path("tale_pt.json")}):
            if (run / name).read_bytes() == (ref / name).read_bytes():
                continue
            if name.suffix == ".safetensors":
                raise AssertionError(f"{name}: {tensor_diff(run / name, ref / name)}")
            if name.name == "adapter_config.json":
                # peft keeps target_modules as a set: its order follows the interpreter's string hashing,
                # randomised per process (PYTHONHASHSEED), so it differs between any two processes
                config, ref_config = _json(run / name), _json(ref / name)
                config["target_modules"].sort(), ref_config["target_modules"].sort()
                if config == ref_config:
                    continue
            raise AssertionError(f"{name} differs")
        return notes


def _temporary(relative: Path) -> bool:
    """A temporary file or folder of an atomic write (``.NAME.XXXX.tmp``), or inside one."""
    return any(part.startswith(".") and part.endswith(".tmp") for part in relative.parts)


def leftovers(folder: Path) -> list[str]:
    """Notes on the temporary files or folders a kill left behind under a completed output."""
    found = sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                   if _temporary(p.relative_to(folder)) and not _temporary(p.relative_to(folder).parent))
    return [f"a kill left {name} behind; the completed run did not remove it" for name in found]


def tensor_diff(path: Path, reference: Path) -> str:
    """Which tensors of two safetensors files differ, and by how much."""
    from safetensors.torch import load_file

    a, b = load_file(path), load_file(reference)
    if a.keys() != b.keys():
        return f"tensor names differ: {sorted(set(a) ^ set(b))}"
    differ = {k: float((a[k].double() - b[k].double()).abs().max()) for k in a if not a[k].equal(b[k])}
    if not differ:
        return "same tensors, different bytes (metadata)"
    return f"{len(differ)} of {len(a)} tensors differ, max abs difference {differ}"


def records_written(paths: list[Path]) -> int:
    """How many whole records the files hold so far (0 for a missing or header-less file)."""
    count = 0
    for path in paths:
        try:
            count += len(read_records(path, complete=False)[1])
        except (OSError, AssertionError):
            pass
    return count
