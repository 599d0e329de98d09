"""DPO: the reference is the adapter-disabled base (loss log 2 at step 0), the batch layout, the
config, and a short run that widens the chosen-vs-rejected margin."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("accelerate")

from tale_integrations.backends.hf import HFGenerator  # noqa: E402
from tale_integrations.core.prompts import answer_messages  # noqa: E402
from tale_integrations.training.sft import end_of_turn_id, load_lora_model, prompt_ids  # noqa: E402
from tale_integrations.training.data import DPORecord  # noqa: E402
from tale_integrations.training.dpo import (  # noqa: E402
    DPOConfig,
    collate_dpo,
    dpo_batch_loss,
    dpo_loss,
    encode_dpo,
    sequence_logps,
    train_dpo,
)
from tale_integrations.training.sft import IGNORE_INDEX  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

CHOSEN = "[[40]]"
REJECTED = "7 7 7 7 7 7 STOP 7 7 [[40]]"


def pairs(n: int = 4) -> list[DPORecord]:
    return [DPORecord(id=f"q{i}", prompt=answer_messages(f"What is {i} plus {i}?"), chosen=CHOSEN, rejected=REJECTED)
            for i in range(n)]


def batch_for(tokenizer, records):
    eot = end_of_turn_id(tokenizer)
    return collate_dpo(tokenizer.pad_token_id)([encode_dpo(tokenizer, r, eot) for r in records])


@pytest.fixture()
def policy(tiny_model_dir):
    return load_lora_model(str(tiny_model_dir), DPOConfig(), "no")


def test_config_defaults_are_the_papers():
    c = DPOConfig()
    assert (c.epochs, c.learning_rate, c.batch_size, c.weight_decay, c.beta, c.max_grad_norm) == \
        (2, 3e-5, 16, 0.001, 0.5, 5.0)
    assert (c.lora_r, c.lora_alpha, c.target_modules) == (8, 32, ("q_proj", "v_proj"))
    assert DPOConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="DPOConfig.beta"):
        DPOConfig(beta=0)


def test_batch_holds_the_chosen_rows_then_the_rejected_rows(tiny_tokenizer):
    records = pairs(2)
    batch = batch_for(tiny_tokenizer, records)
    assert batch["input_ids"].shape[0] == 4
    n_prompt = len(prompt_ids(tiny_tokenizer, records[0].prompt))
    labels = batch["labels"]
    assert (labels[:, :n_prompt] == IGNORE_INDEX).all()
    eot = end_of_turn_id(tiny_tokenizer)
    texts = [tiny_tokenizer.decode([t for t in row.tolist() if t not in (IGNORE_INDEX, eot)]) for row in labels]
    assert texts == [CHOSEN, CHOSEN, REJECTED, REJECTED]


def test_at_step_zero_the_policy_is_the_reference_and_the_loss_is_log_2(policy, tiny_tokenizer):
    batch = batch_for(tiny_tokenizer, pairs(3))
    loss, metrics = dpo_batch_loss(policy, batch, beta=0.5)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)
    assert metrics["margin"] == 0.0 and metrics["chosen_reward"] == 0.0
    loss.backward()  # the loss still reaches the adapter (through lora_B)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in policy.named_parameters() if "lora_B" in n)


def test_the_reference_log_probs_come_from_the_adapter_disabled_base(policy, tiny_tokenizer, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # the adapter now changes the outputs
    batch = batch_for(tiny_tokenizer, pairs(2))
    args = (batch["input_ids"], batch["attention_mask"], batch["labels"])
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        base_logps = sequence_logps(base, *args)
        policy_logps = sequence_logps(policy, *args)
    assert not torch.allclose(policy_logps, base_logps, atol=1e-3)
    loss, _ = dpo_batch_loss(policy, batch, beta=0.5)
    expected, _ = dpo_loss(policy_logps[:2], policy_logps[2:], base_logps[:2], base_logps[2:], 0.5)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # and the adapter is back on afterwards
    with torch.no_grad():
        assert torch.allclose(sequence_logps(policy, *args), policy_logps)


def test_a_few_steps_widen_the_chosen_vs_rejected_margin(tmp_path, tiny_model_dir, tiny_tokenizer):
    config = DPOConfig(learning_rate=2e-2, epochs=4, batch_size=2, micro_batch_size=1, lr_scheduler="constant",
                       save_every=0)
    result = train_dpo(tiny_model_dir, pairs(4), tmp_path / "dpo", config, progress=False)
    assert result.steps == 8 and result.loss_history[0] == pytest.approx(math.log(2), abs=1e-6)
    assert result.final_loss < math.log(2)
    tuned = HFGenerator(tmp_path / "dpo", device="cpu").model  # base + adapter, one call
    with torch.no_grad():
        loss, metrics = dpo_batch_loss(tuned, batch_for(tiny_tokenizer, pairs(4)), beta=config.beta)
    assert metrics["margin"] > 1.0 and metrics["accuracy"] == 1.0
    assert loss.item() < math.log(2) - 0.2
    assert result.metadata["method"] == "dpo" and result.metadata["hyperparameters"]["beta"] == 0.5


def test_dpo_data_from_a_search_file_leaves_out_unusable_records(tmp_path, tiny_model_dir, write_search, make_record):
    records = [make_record(f"q{i}", question=f"What is {i}?", optimal=CHOSEN, vanilla=REJECTED) for i in range(2)]
    records += [make_record("same", optimal=CHOSEN, vanilla=CHOSEN), make_record("nb", "no_budget")]
    path = write_search(tmp_path / "s.jsonl", records)
    config = DPOConfig(epochs=1, batch_size=2, micro_batch_size=1)
    result = train_dpo(tiny_model_dir, path, tmp_path / "out", config, progress=False)
    stats = result.metadata["data_stats"]
    assert result.metadata["num_examples"] == 2 and stats["used"] == 2
    assert stats["left_out"] == {"identical_answers": 1, "no_budget": 1}
    assert result.metadata["data_file"] == str(path.resolve())
