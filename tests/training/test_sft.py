"""LoRA SFT: label masking, the loss over target tokens only, the config, and a real training run
on a tiny model (the loss falls, the adapter reloads with one call and changes the outputs)."""

from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("accelerate")

from tale_integrations.backends.hf import HFGenerator  # noqa: E402
from tale_integrations.core.prompts import answer_messages  # noqa: E402
from tale_integrations.training.sft import end_of_turn_id, prompt_ids  # noqa: E402
from tale_integrations.training.data import SFTRecord  # noqa: E402
from tale_integrations.training.sft import (  # noqa: E402
    IGNORE_INDEX,
    SFTConfig,
    collate_sft,
    encode_sft,
    sft_loss,
    train_sft,
)

# peft's adapter loading probes a deprecated transformers attribute (not ours to fix)
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

TARGET = "[[40]] 7 STOP"
QUESTION = "What is 2 plus 2?"


def record(question: str, completion: str) -> SFTRecord:
    return SFTRecord(id=question, prompt=answer_messages(question), completion=completion)


# -- masking and loss -----------------------------------------------------------------------------


def test_end_of_turn_is_the_token_the_template_closes_a_turn_with(tiny_tokenizer):
    assert tiny_tokenizer.convert_ids_to_tokens(end_of_turn_id(tiny_tokenizer)) == "<|im_end|>"


def test_labels_mask_the_prompt_and_the_padding(tiny_tokenizer):
    eot = end_of_turn_id(tiny_tokenizer)
    short, long = record("What is 1 plus 1?", "[[40]]"), record("Q", TARGET)
    encoded = [encode_sft(tiny_tokenizer, r, eot) for r in (short, long)]
    for r, e in zip((short, long), encoded):
        n_prompt = len(prompt_ids(tiny_tokenizer, r.prompt))
        assert e["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
        target = e["input_ids"][n_prompt:]
        assert e["labels"][n_prompt:] == target and target[-1] == eot
        assert tiny_tokenizer.decode(target[:-1]) == r.completion
    batch = collate_sft(tiny_tokenizer.pad_token_id)(encoded)
    width = batch["input_ids"].shape[1]
    for row, e in enumerate(encoded):
        n = len(e["input_ids"])
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (width - n)
        assert batch["labels"][row, n:].tolist() == [IGNORE_INDEX] * (width - n)
        assert batch["input_ids"][row, n:].tolist() == [tiny_tokenizer.pad_token_id] * (width - n)
        assert batch["labels"][row, :n].tolist() == e["labels"]
    labelled = (batch["labels"] != IGNORE_INDEX).sum().item()
    assert labelled == sum(len(e["input_ids"]) - e["labels"].count(IGNORE_INDEX) for e in encoded)


def test_loss_is_the_mean_cross_entropy_over_target_tokens_only(tiny_model, tiny_tokenizer):
    eot = end_of_turn_id(tiny_tokenizer)
    records = [record("What is 1 plus 1?", "[[40]]"), record("Q", TARGET)]
    encoded = [encode_sft(tiny_tokenizer, r, eot) for r in records]
    batch = collate_sft(tiny_tokenizer.pad_token_id)(encoded)
    with torch.no_grad():
        loss, metrics = sft_loss(tiny_model, batch)
    # by hand: each row alone (no padding at all), only positions whose next token is a target token
    terms = []
    for r, e in zip(records, encoded):
        ids = torch.tensor([e["input_ids"]])
        with torch.no_grad():
            logp = torch.log_softmax(tiny_model(input_ids=ids).logits[0].double(), dim=-1)
        n_prompt = len(prompt_ids(tiny_tokenizer, r.prompt))
        terms += [-logp[t - 1, e["input_ids"][t]].item() for t in range(n_prompt, len(e["input_ids"]))]
    assert metrics["target_tokens"] == len(terms)
    assert loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    # the unmasked loss (prompt and padding included, the reference scripts' defect) is a different number
    unmasked = tiny_model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss.item()
    assert unmasked != pytest.approx(loss.item(), rel=1e-3)


# -- config ---------------------------------------------------------------------------------------


def test_config_defaults_are_the_papers_and_round_trip():
    config = SFTConfig()
    assert (config.epochs, config.learning_rate, config.batch_size, config.weight_decay) == (3, 1e-4, 16, 0.01)
    assert (config.lora_r, config.lora_alpha, config.target_modules) == (8, 32, ("q_proj", "v_proj"))
    assert SFTConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert "save_every" not in config.identity() and "learning_rate" in config.identity()
    with pytest.raises(AttributeError):
        config.epochs = 1  # frozen


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"epochs": 0}, "SFTConfig.epochs"),
    ({"learning_rate": 0}, "SFTConfig.learning_rate"),
    ({"batch_size": 16, "micro_batch_size": 3}, "multiple of micro_batch_size"),
    ({"lr_scheduler": "step"}, "lr_scheduler"),
    ({"mixed_precision": "fp8"}, "mixed_precision"),
    ({"target_modules": "q_proj"}, "target_modules"),
    ({"warmup_ratio": 2}, "warmup_ratio"),
    ({"max_grad_norm": -1.0}, "max_grad_norm"),
])
def test_config_validation_names_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SFTConfig(**kwargs)


def test_unknown_config_keys_are_refused():
    with pytest.raises(ValueError, match="no field"):
        SFTConfig.from_dict({"epochs": 1, "lr": 1e-3})


# -- a real run -----------------------------------------------------------------------------------

FAST = SFTConfig(learning_rate=2e-2, epochs=10, batch_size=2, micro_batch_size=1, lr_scheduler="constant",
                 save_every=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir):
    """30 steps of SFT on six prompts that share one target, with merged weights."""
    records = [record(f"What is {i} plus {i}?", TARGET) for i in range(6)]
    out = tmp_path_factory.mktemp("sft") / "run"
    return train_sft(tiny_model_dir, records, out, FAST, merge=True, progress=False)


def test_training_lowers_the_loss(trained):
    assert trained.steps == 30 and trained.resumed_from == 0 and len(trained.loss_history) == 30
    first, last = sum(trained.loss_history[:3]) / 3, sum(trained.loss_history[-3:]) / 3
    assert last < first - 0.3, trained.loss_history
    assert trained.final_loss == trained.loss_history[-1]


def test_the_adapter_reloads_with_one_call_and_moves_outputs_to_the_target(trained, tiny_model_dir):
    base = HFGenerator(tiny_model_dir, device="cpu").generate([answer_messages(QUESTION)], max_tokens=6)[0].text
    tuned = HFGenerator(trained.out_dir, device="cpu")
    text = tuned.generate([answer_messages(QUESTION)], max_tokens=6)[0].text
    assert text != base
    assert text.startswith("[[40]]"), text
    config = json.loads((trained.out_dir / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model_dir.resolve())
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"] and config["r"] == 8
    assert (trained.out_dir / "adapter_model.safetensors").is_file()
    assert not list(trained.out_dir.glob("*.bin")) and not (trained.out_dir / "checkpoints").exists()


def test_merged_weights_give_the_same_answers(trained):
    merged_dir = trained.out_dir / "merged"
    assert (merged_dir / "config.json").is_file() and list(merged_dir.glob("*.safetensors"))
    assert (merged_dir / "tokenizer_config.json").is_file()
    prompts = [answer_messages(QUESTION), answer_messages("A farmer has 3 cows. How many cows?")]
    merged = HFGenerator(merged_dir, device="cpu").generate(prompts, max_tokens=6)
    adapter = HFGenerator(trained.out_dir, device="cpu").generate(prompts, max_tokens=6)
    assert [g.text for g in merged] == [g.text for g in adapter]


def test_metadata_describes_the_run(trained, tiny_model_dir):
    meta = json.loads((trained.out_dir / "tale_pt.json").read_text())
    assert meta["kind"] == "tale-pt" and meta["method"] == "sft"
    assert meta["base_model"] == str(tiny_model_dir.resolve())
    assert len(meta["data_sha256"]) == 64 and meta["data_file"] is None
    assert meta["hyperparameters"]["learning_rate"] == 2e-2 and meta["num_examples"] == 6
    assert meta["final_loss"] == trained.final_loss and meta["steps"] == 30
    assert meta["end_of_turn_token"] == "<|im_end|>" and meta["merged"] is True
    assert meta["precision"] == "no" and meta["gradient_accumulation_steps"] == 2


def test_examples_longer_than_max_length_are_left_out_and_counted(tmp_path, tiny_model_dir, tiny_tokenizer):
    short, long = record("Q", "[[40]]"), record("Q", " ".join(["7"] * 60))
    fits = len(encode_sft(tiny_tokenizer, short, end_of_turn_id(tiny_tokenizer))["input_ids"])
    config = SFTConfig(epochs=1, batch_size=1, micro_batch_size=1, max_length=fits)
    result = train_sft(tiny_model_dir, [short, long], tmp_path / "out", config, progress=False)
    assert result.metadata["num_examples"] == 1 and result.metadata["left_out_too_long"] == 1
    with pytest.raises(ValueError, match="max_length=5"):
        train_sft(tiny_model_dir, [short], tmp_path / "none", SFTConfig(max_length=5), progress=False)
    assert not (tmp_path / "none").exists()


def test_callbacks_see_every_step(tmp_path, tiny_model_dir):
    seen = []
    config = SFTConfig(epochs=2, batch_size=2, micro_batch_size=1, save_every=0)
    result = train_sft(tiny_model_dir, [record(f"Q{i}", "[[40]]") for i in range(3)], tmp_path / "out", config,
                       callbacks=[seen.append], progress=False)
    # 3 examples, micro-batch 1, 2 per step: ceil(3 / 2) = 2 steps per epoch
    assert [s.step for s in seen] == [1, 2, 3, 4] == list(range(1, result.steps + 1))
    assert [s.epoch for s in seen] == [0, 0, 1, 1]
    assert all(math.isfinite(s.loss) and s.total_steps == 4 for s in seen)
