"""TALE-PT on the embedded SmolLM2-135M-Instruct (slow): its chat template's end-of-turn token is
the target's last token, and the trained adapter loads back with one call."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("peft")
pytest.importorskip("accelerate")

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")]


def test_two_steps_of_sft_on_the_embedded_model(tmp_path, embedded_generator, sft_records):
    from tale_integrations.backends.embedded import embedded_model_path
    from tale_integrations.backends.hf import HFGenerator
    from tale_integrations.core.prompts import answer_messages
    from tale_integrations.training.sft import SFTConfig, train_sft

    records = sft_records(2, target="Half of 48 is 24, so she sold 48 clips in April. [[48]]")
    config = SFTConfig(epochs=1, batch_size=1, micro_batch_size=1, learning_rate=1e-3)
    result = train_sft(None, records, tmp_path / "out", config, progress=False)
    assert result.steps == 2
    meta = json.loads((tmp_path / "out" / "tale_pt.json").read_text())
    assert meta["end_of_turn_token"] == "<|im_end|>" and meta["base_model"] == str(embedded_model_path())
    adapter_config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(embedded_model_path())
    tuned = HFGenerator(tmp_path / "out", device="cpu")
    [generation] = tuned.generate([answer_messages("What is 2 plus 2?")], max_tokens=8)
    assert generation.usage.output_tokens >= 1 and tuned.model_name == "out"
