"""The run manifest (``RUN_DIR/run.json``, `eval.harness._write_manifest`): several ``tale eval``
processes on one folder each add their entries, and none is lost (real concurrent processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

WRITER = textwrap.dedent("""
    import dataclasses, sys
    from tale_integrations.eval.datasets import load_dataset
    from tale_integrations.eval.harness import _write_manifest
    from pathlib import Path

    run_dir, questions, tag, rounds = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])

    class Model:
        model_name = f"model-{tag}"

    base = load_dataset(questions)
    print("ready", flush=True)
    sys.stdin.readline()  # start together
    for i in range(rounds):
        _write_manifest(run_dir, [dataclasses.replace(base, name=f"{tag}-{i}")], Model(), None)
""")


def test_concurrent_writers_keep_each_others_entries(tmp_path, monkeypatch, write_jsonl):
    monkeypatch.setenv("TALE_CACHE_DIR", str(tmp_path / "cache"))  # where the lock files go
    questions = write_jsonl(tmp_path / "q.jsonl", [{"question": "1 + 1?", "answer": 2}])
    run_dir, rounds = tmp_path / "run", 40
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(run_dir), str(questions), tag, str(rounds)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for tag in ("a", "b")]
    for proc in procs:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    manifest = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    assert sorted(manifest["datasets"]) == sorted(f"{tag}-{i}" for tag in "ab" for i in range(rounds))
    assert manifest["models"] == ["model-a", "model-b"] and manifest["kind"] == "tale-eval-run"
    assert os.listdir(run_dir) == ["run.json"]  # no temporary or lock file in the run folder
