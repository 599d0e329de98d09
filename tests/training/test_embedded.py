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


def test_sampled_search_on_the_embedded_model_finds_a_budget(data_dir):
    """The paper's search, as `tale search --temperature 0.3 --attempts 4 --seed 0` runs it, reaches a found
    budget on the embedded model: a correct answer under a halved budget, shorter than the vanilla one.

    The 16 questions are GSM8K-Zero lines the model answers correctly when greedy; sampled decoding is
    seeded per batch, so the batch (not one question alone) is what reproduces.
    """
    from tale_integrations.backends.hf import HFGenerator
    from tale_integrations.core.search import SearchItem, SearchMode, SearchStatus, search
    from tale_integrations.core.answers import gsm8k_zero_gold

    lines = [6, 20, 36, 41, 44, 47, 50, 51, 68, 69, 84, 96, 99, 104, 123, 128]
    rows = (data_dir / "gsm8k_zero" / "test.jsonl").read_text(encoding="utf-8").splitlines()
    items = [SearchItem(id=f"gsm8k-zero:{n}", question=json.loads(rows[n - 1])["question"],
                        gold=gsm8k_zero_gold(json.loads(rows[n - 1])["answer"])) for n in lines]
    gen = HFGenerator(max_batch_size=16, temperature=0.3, seed=0).load()
    records = search(gen, items, mode=SearchMode.GREEDY, max_tokens=256, attempts=4)
    found = [r for r in records if r.status is SearchStatus.FOUND]
    assert found, [(r.id, str(r.status)) for r in records]
    for r in found:
        assert r.optimal_budget < r.vanilla_tokens and r.optimal_tokens < r.vanilla_tokens
        assert any(p.budget == r.optimal_budget and p.accepted and p.correct for p in r.trace)
