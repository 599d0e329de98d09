"""Loading checkpoints: base + LoRA adapter (made with peft here), merged weights, and bad input."""

from __future__ import annotations

import json
import shutil

import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from tiny_models import build_tiny_model  # noqa: E402

from tale_integrations.backends.hf import HFGenerator  # noqa: E402

PROMPT = [{"role": "user", "content": "What is 2 + 3?"}]


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, tiny_model_dir, tiny_tokenizer):
    """A LoRA adapter with random (non-zero) weights over the tiny base, saved as PEFT does."""
    base = build_tiny_model(tiny_tokenizer)
    config = peft.LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM",
                             init_lora_weights=False)
    torch.manual_seed(1)
    model = peft.get_peft_model(base, config)
    model.peft_config["default"].base_model_name_or_path = str(tiny_model_dir)
    folder = tmp_path_factory.mktemp("tiny-adapter")
    model.save_pretrained(folder)
    return folder


def test_adapter_folder_alone_loads_its_base_and_changes_outputs(adapter_dir, tiny_model_dir, tiny_tokenizer):
    assert json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_model_dir)
    tuned = HFGenerator(adapter_dir, device="cpu")
    assert not tuned.is_loaded
    assert tuned.model_name == adapter_dir.name
    base = HFGenerator(tiny_model_dir, device="cpu")
    tuned_text = tuned.generate([PROMPT], max_tokens=12)[0].text
    assert tuned_text != base.generate([PROMPT], max_tokens=12)[0].text
    # the same as peft's own loading path
    reference = peft.PeftModel.from_pretrained(build_tiny_model(tiny_tokenizer), adapter_dir)
    expected = HFGenerator.from_model(reference, tiny_tokenizer).generate([PROMPT], max_tokens=12)[0].text
    assert tuned_text == expected


def test_explicit_base_plus_adapter_and_merge(adapter_dir, tiny_model_dir):
    unmerged = HFGenerator(tiny_model_dir, adapter=adapter_dir, device="cpu")
    merged = HFGenerator(tiny_model_dir, adapter=adapter_dir, merge=True, device="cpu")
    a = unmerged.generate([PROMPT], max_tokens=12)[0]
    b = merged.generate([PROMPT], max_tokens=12)[0]
    assert a.text == b.text and a.usage == b.usage
    assert isinstance(unmerged.model, peft.PeftModel)
    assert not isinstance(merged.model, peft.PeftModel)


def test_merged_checkpoint_folder_loads_as_a_plain_model(adapter_dir, tiny_model_dir, tmp_path):
    merged = HFGenerator(tiny_model_dir, adapter=adapter_dir, merge=True, device="cpu")
    merged.model.save_pretrained(tmp_path / "merged", safe_serialization=True)
    merged.tokenizer.save_pretrained(tmp_path / "merged")
    again = HFGenerator(tmp_path / "merged", device="cpu")
    assert again.generate([PROMPT], max_tokens=12)[0].text == merged.generate([PROMPT], max_tokens=12)[0].text


def test_adapter_on_the_wrong_base_is_a_clear_error(adapter_dir, tmp_path, tiny_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    other = LlamaForCausalLM(LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=48, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=128))
    other.save_pretrained(tmp_path / "other", safe_serialization=True)
    tiny_tokenizer.save_pretrained(tmp_path / "other")
    gen = HFGenerator(tmp_path / "other", adapter=adapter_dir)
    with pytest.raises(ValueError, match=r"adapter=.*does not fit the base model"):
        gen.load()


def test_missing_adapter_names_the_argument(tiny_model_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"adapter=.*does not exist"):
        HFGenerator(tiny_model_dir, adapter=tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        HFGenerator(tiny_model_dir, adapter=tmp_path / "empty")


def test_a_missing_local_path_is_never_sent_to_the_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    # One slash, like org/name; but models/ is a folder here, so this is a path: fail at once, naming it.
    with pytest.raises(FileNotFoundError, match=r"model='models/typo' does not exist; models/ is a local folder"):
        HFGenerator("models/typo")
    with pytest.raises(FileNotFoundError, match=r"model='models/a/b' does not exist"):
        HFGenerator("models/a/b")
    assert HFGenerator("someorg/somemodel").model_name == "somemodel"  # a hub id: checked only when loading


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:3"])
def test_a_missing_gpu_is_an_error_naming_the_device(tiny_model_dir, device):
    with pytest.raises(ValueError, match=rf"device='{device}', but no CUDA device is available here"):
        HFGenerator(tiny_model_dir, device=device)


def test_a_bad_device_name_is_an_error(tiny_model_dir):
    with pytest.raises(ValueError, match="device='gpu' is not a device torch knows"):
        HFGenerator(tiny_model_dir, device="gpu")
    assert HFGenerator(tiny_model_dir, device="cpu").device == "cpu"


def test_pickle_only_adapter_is_refused(adapter_dir, tmp_path):
    folder = tmp_path / "pickled"
    shutil.copytree(adapter_dir, folder)
    (folder / "adapter_model.safetensors").rename(folder / "adapter_model.bin")
    with pytest.raises(ValueError, match="only safetensors"):
        HFGenerator(adapter=folder)


def test_pickle_only_base_is_refused(tiny_model_dir, tmp_path):
    folder = tmp_path / "pickled-base"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"model=.*only pickle weights"):
        HFGenerator(folder)


def test_adapter_without_a_base_name_is_a_clear_error(adapter_dir, tmp_path):
    folder = tmp_path / "nameless"
    shutil.copytree(adapter_dir, folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = None
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="pass base=PATH|does not name its base"):
        HFGenerator(adapter=folder)


def test_adapter_base_that_is_missing_is_named(adapter_dir, tmp_path):
    folder = tmp_path / "orphan"
    shutil.copytree(adapter_dir, folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "gone")
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError, match="base_model_name_or_path"):
        HFGenerator(adapter=folder)


@pytest.mark.gpu
def test_cuda_device_map_auto_and_bf16(tiny_model_dir, adapter_dir):
    gen = HFGenerator(tiny_model_dir, adapter=adapter_dir, device="cuda").load()
    assert gen.model.dtype == torch.bfloat16
    assert getattr(gen.model, "hf_device_map", None) or str(gen.model.device).startswith("cuda")
    assert gen.generate([PROMPT], max_tokens=4)[0].usage.output_tokens >= 1


# -- TALE-PT run folders: refused until the run has finished ----------------------------------------------


def _unfinished_run(adapter_dir, folder):
    """A TALE-PT output folder killed after its adapter was written but before ``tale_pt.json``."""
    shutil.copytree(adapter_dir, folder)
    (folder / "run.json").write_text(json.dumps({"kind": "tale-pt", "method": "sft"}))
    return folder


def test_an_unfinished_training_run_is_refused_unless_allowed(adapter_dir, tmp_path):
    import re

    from tale_integrations.core.errors import TaleValueError

    run = _unfinished_run(adapter_dir, tmp_path / "run")
    fix = r"running the same `tale train` command again.*allow_unfinished=True"
    with pytest.raises(TaleValueError, match=rf"model='{re.escape(str(run))}' is a TALE-PT training run that has not "
                                             rf"finished \(no tale_pt.json.*{fix}"):
        HFGenerator(run, device="cpu")
    with pytest.raises(TaleValueError, match=rf"adapter='{re.escape(str(run))}' .*has not finished"):
        HFGenerator(adapter=run, device="cpu")
    allowed = HFGenerator(run, allow_unfinished=True, device="cpu")
    assert allowed.settings.allow_unfinished is True
    expected = HFGenerator(adapter_dir, device="cpu").generate([PROMPT], max_tokens=6)[0].text
    assert allowed.generate([PROMPT], max_tokens=6)[0].text == expected
    (run / "tale_pt.json").write_text("{}")  # finished: loads as before
    assert HFGenerator(run, device="cpu").generate([PROMPT], max_tokens=6)[0].text == expected


def test_a_run_folder_with_only_checkpoints_is_refused(tmp_path):
    from tale_integrations.core.errors import TaleValueError

    (tmp_path / "run" / "checkpoints" / "step-00000002").mkdir(parents=True)
    with pytest.raises(TaleValueError, match="TALE-PT training run that has not finished"):
        HFGenerator(tmp_path / "run", device="cpu")


def test_allow_unfinished_must_be_a_bool():
    from tale_integrations.backends.hf import HFSettings

    with pytest.raises(ValueError, match="allow_unfinished must be True or False"):
        HFSettings(allow_unfinished="yes")
