"""Checkpoints and resume: a run killed mid-training continues from its latest checkpoint and ends
exactly like an uninterrupted one; an output folder holding anything else is refused untouched."""

from __future__ import annotations

import dataclasses
import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("accelerate")

from safetensors.torch import load_file  # noqa: E402

from tale_integrations.core.records import RunMismatchError  # noqa: E402
from tale_integrations.training.sft import SFTConfig, train_sft  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

# 5 examples, micro-batch 1, effective batch 2: 3 steps per epoch (the last one a single micro-batch),
# 9 steps in all, checkpoints at steps 2, 4, 6 and 8.
CONFIG = SFTConfig(learning_rate=1e-2, epochs=3, batch_size=2, micro_batch_size=1, save_every=2, keep_checkpoints=2)


class Killed(Exception):
    pass


def kill_at(step: int):
    def callback(info):
        if info.step == step:
            raise Killed(f"killed at step {step}")

    return callback


def snapshot(folder):
    return {p.relative_to(folder): (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model_dir):
    from tale_integrations.core.prompts import answer_messages
    from tale_integrations.training.data import SFTRecord

    records = [SFTRecord(id=f"q{i}", prompt=answer_messages(f"What is {i} plus {i}?"), completion="[[40]] 7 STOP")
               for i in range(5)]
    out = tmp_path_factory.mktemp("full") / "run"
    return records, train_sft(tiny_model_dir, records, out, CONFIG, progress=False)


def test_a_killed_run_resumes_from_its_latest_checkpoint_and_ends_the_same(tmp_path, tiny_model_dir, uninterrupted):
    records, full = uninterrupted
    out = tmp_path / "run"
    with pytest.raises(Killed):
        train_sft(tiny_model_dir, records, out, CONFIG, callbacks=[kill_at(5)], progress=False)
    assert not (out / "tale_pt.json").exists() and not (out / "adapter_model.safetensors").exists()
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert kept == ["step-00000002", "step-00000004"]
    checkpoint = out / "checkpoints" / "step-00000004"
    assert (checkpoint / "adapter" / "adapter_model.safetensors").is_file()
    assert {"optimizer.bin", "scheduler.bin", "random_states_0.pkl"} <= {p.name for p in checkpoint.iterdir()}
    assert not list(checkpoint.glob("model*.safetensors"))  # the frozen base is never copied
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["step"] == 4 and len(state["loss_history"]) == 4

    # a runtime-only setting may change on resume
    resumed = train_sft(tiny_model_dir, records, out, dataclasses.replace(CONFIG, save_every=3), progress=False)
    assert resumed.resumed_from == 4 and resumed.steps == full.steps == 9
    assert len(resumed.loss_history) == 9
    assert resumed.loss_history == pytest.approx(full.loss_history, abs=1e-5)
    a, b = load_file(out / "adapter_model.safetensors"), load_file(full.out_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert not (out / "checkpoints").exists()


def test_a_finished_run_is_not_trained_again(tiny_model_dir, uninterrupted):
    records, full = uninterrupted
    before = snapshot(full.out_dir)
    again = train_sft(tiny_model_dir, records, full.out_dir, CONFIG, progress=False)
    assert again.resumed_from == again.steps == 9 and again.final_loss == full.final_loss
    assert snapshot(full.out_dir) == before


def test_a_finished_run_can_be_merged_later(tmp_path, tiny_model_dir, uninterrupted):
    records, _ = uninterrupted
    config = dataclasses.replace(CONFIG, epochs=1)
    train_sft(tiny_model_dir, records, tmp_path / "run", config, progress=False)
    assert not (tmp_path / "run" / "merged").exists()
    result = train_sft(tiny_model_dir, records, tmp_path / "run", config, merge=True, progress=False)
    assert (tmp_path / "run" / "merged" / "config.json").is_file() and result.metadata["merged"] is True


@pytest.mark.parametrize("change", ["hyperparameters", "data", "base"])
def test_a_folder_holding_a_different_run_is_refused_untouched(tmp_path, tiny_model_dir, uninterrupted, change,
                                                              tiny_model, tiny_tokenizer):
    records, full = uninterrupted
    before = snapshot(full.out_dir)
    config, data, base = CONFIG, records, tiny_model_dir
    if change == "hyperparameters":
        config, message = dataclasses.replace(CONFIG, learning_rate=5e-3), "learning_rate"
    elif change == "data":
        data, message = records[:4], "data_sha256"
    else:
        base = tmp_path / "other-base"
        tiny_model.save_pretrained(base)
        tiny_tokenizer.save_pretrained(base)
        message = "base_model"
    with pytest.raises(RunMismatchError, match=rf"{full.out_dir}.*different TALE-PT run.*{message}"):
        train_sft(base, data, full.out_dir, config, progress=False)
    assert snapshot(full.out_dir) == before


def test_a_killed_run_with_other_settings_keeps_its_checkpoints(tmp_path, tiny_model_dir, uninterrupted):
    records, _ = uninterrupted
    out = tmp_path / "run"
    with pytest.raises(Killed):
        train_sft(tiny_model_dir, records, out, CONFIG, callbacks=[kill_at(3)], progress=False)
    before = snapshot(out)
    with pytest.raises(RunMismatchError, match="epochs: 3 -> 4"):
        train_sft(tiny_model_dir, records, out, dataclasses.replace(CONFIG, epochs=4), progress=False)
    assert snapshot(out) == before


def test_a_folder_of_other_files_or_a_file_is_refused(tmp_path, tiny_model_dir, uninterrupted):
    records, _ = uninterrupted
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=rf"{foreign} is not empty and holds no TALE-PT run"):
        train_sft(tiny_model_dir, records, foreign, CONFIG, progress=False)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        train_sft(tiny_model_dir, records, a_file, CONFIG, progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert train_sft(tiny_model_dir, records, empty, dataclasses.replace(CONFIG, epochs=1), progress=False).steps == 3


# -- atomic outputs and one trainer per folder ------------------------------------------------------------

#: A trainer in its own process: SFT on the five records, paused after its first step (and first
#: checkpoint) until the file argv[3] appears.
TRAINER = """
import sys, time
from pathlib import Path
from tale_integrations.core.prompts import answer_messages
from tale_integrations.training.data import SFTRecord
from tale_integrations.training.sft import SFTConfig, train_sft

base, out, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
records = [SFTRecord(id=f"q{i}", prompt=answer_messages(f"What is {i} plus {i}?"), completion="[[40]] 7 STOP")
           for i in range(5)]

def pause(info):
    if info.step == 1:
        print("training", flush=True)
        while not go.exists():
            time.sleep(0.05)

config = SFTConfig(learning_rate=1e-2, epochs=1, batch_size=2, micro_batch_size=1, save_every=1, keep_checkpoints=2)
result = train_sft(base, records, out, config, callbacks=[pause], progress=False)
print("done", result.steps, flush=True)
"""


def hidden(folder):
    """Temporary folders and files (a dot name) left in an output folder or its checkpoints."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*"))


def test_a_second_trainer_on_one_folder_is_refused_or_waits(tmp_path, tiny_model_dir, uninterrupted, monkeypatch):
    import re
    import subprocess
    import sys
    import threading

    from tale_integrations.core.errors import RunLockedError

    monkeypatch.setenv("TALE_CACHE_DIR", str(tmp_path / "cache"))  # the lock files: shared with the subprocess
    records, _ = uninterrupted
    out, go = tmp_path / "run", tmp_path / "go"
    config = SFTConfig(learning_rate=1e-2, epochs=1, batch_size=2, micro_batch_size=1, save_every=1,
                       keep_checkpoints=2)
    first = subprocess.Popen([sys.executable, "-c", TRAINER, str(tiny_model_dir), str(out), str(go)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "training", first.stderr.read()
        before = snapshot(out)
        assert (out / "checkpoints" / "step-00000001" / "trainer_state.json").is_file()
        with pytest.raises(RunLockedError, match=rf"{re.escape(str(out))} is being written by pid {first.pid} "):
            train_sft(tiny_model_dir, records, out, config, progress=False)
        assert snapshot(out) == before  # the first trainer's checkpoints are untouched

        threading.Timer(0.5, go.touch).start()
        waited = train_sft(tiny_model_dir, records, out, config, progress=False, wait=True)
        assert first.wait(timeout=300) == 0 and first.stdout.read().split() == ["done", "3"]
    finally:
        go.touch()
        if first.poll() is None:
            first.kill()
    # the waiting trainer found the run complete and did not train it again
    assert waited.resumed_from == waited.steps == 3
    assert (out / "tale_pt.json").is_file() and not (out / "checkpoints").exists() and hidden(out) == []


def test_a_checkpoint_cut_short_is_never_picked_up(tmp_path, tiny_model_dir, uninterrupted, monkeypatch):
    accelerate = pytest.importorskip("accelerate")

    records, full = uninterrupted
    out = tmp_path / "run"
    real, saves = accelerate.Accelerator.save_state, []

    def save_then_die(self, output_dir=None, **kwargs):
        saves.append(output_dir)
        result = real(self, output_dir, **kwargs)
        if len(saves) == 2:  # the state of step 4 is written, the checkpoint not yet in place
            raise Killed("killed while saving step 4")
        return result

    monkeypatch.setattr(accelerate.Accelerator, "save_state", save_then_die)
    with pytest.raises(Killed):
        train_sft(tiny_model_dir, records, out, CONFIG, progress=False)
    monkeypatch.undo()
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000002"]  # no step 4, no temporary folder
    resumed = train_sft(tiny_model_dir, records, out, CONFIG, progress=False)
    assert resumed.resumed_from == 2 and resumed.loss_history == pytest.approx(full.loss_history, abs=1e-5)
    assert hidden(out) == []


def test_an_unfinished_run_is_refused_by_the_loader_until_it_finishes(tmp_path, tiny_model_dir, uninterrupted):
    from tale_integrations.backends.hf import HFGenerator
    from tale_integrations.core.errors import TaleValueError

    records, _ = uninterrupted
    out = tmp_path / "run"
    with pytest.raises(Killed):
        train_sft(tiny_model_dir, records, out, CONFIG, callbacks=[kill_at(3)], progress=False)
    with pytest.raises(TaleValueError, match=r"run.*is a TALE-PT training run that has not finished"):
        HFGenerator(out, device="cpu")
    train_sft(tiny_model_dir, records, out, CONFIG, progress=False)
    assert HFGenerator(out, device="cpu").model_name == "run"
