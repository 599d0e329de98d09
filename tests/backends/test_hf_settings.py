"""`HFSettings` and `CallSettings` (`backends/hf/settings.py`), and how the framework classes hold them
(`backends/hf/wrappers.py`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from tale_integrations.backends.hf import HFGenerator, HFSettings  # noqa: E402
from tale_integrations.backends.hf.settings import CallSettings, ConflictingSettings  # noqa: E402
from tale_integrations.core.budget import BudgetEnforcement  # noqa: E402


def test_defaults_and_to_dict():
    settings = HFSettings()
    assert (settings.max_new_tokens, settings.max_batch_size, settings.temperature) == (512, 16, 0.0)
    assert settings.enforcement is None and HFSettings(enforce_budget=True).enforcement == BudgetEnforcement()
    custom = HFSettings(model=Path("m"), dtype=torch.bfloat16, enforce_budget=BudgetEnforcement(answer_reserve=30))
    assert custom.to_dict()["model"] == "m" and custom.to_dict()["dtype"] == "bfloat16"
    assert custom.to_dict()["enforce_budget"] == {"factor": 1.0, "answer_reserve": 30}
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.max_new_tokens = 3


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_new_tokens": 0}, ValueError, "max_new_tokens must be a positive int, got 0"),
        ({"max_batch_size": True}, ValueError, "max_batch_size must be a positive int"),
        ({"temperature": 2.5}, ValueError, "temperature must be a number from 0 to 2"),
        ({"seed": "1"}, ValueError, "seed must be an int or None"),
        ({"dtype": "float64"}, ValueError, "dtype must be one of"),
        ({"device": ""}, TypeError, "device must be a string"),
        ({"model": 3}, TypeError, "model must be a path or a hub id or None"),
        ({"enforce_budget": "yes"}, TypeError, "enforce_budget must be a bool or a BudgetEnforcement"),
        ({"pack_weights": 1}, TypeError, "pack_weights must be True, False or None"),
        ({"chat_template": " "}, ValueError, "chat_template must be a non-empty Jinja template"),
        ({"merge": None}, ValueError, "merge must be True or False"),
    ],
)
def test_bad_settings_name_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        HFSettings(**kwargs)


def test_the_generator_takes_settings_and_keyword_overrides(tiny_model_dir):
    settings = HFSettings(model=tiny_model_dir, max_new_tokens=7, device="cpu")
    gen = HFGenerator(settings=settings, temperature=0.5)
    assert gen.settings == dataclasses.replace(settings, temperature=0.5)
    assert (gen.max_new_tokens, gen.temperature, gen.model_name, gen.device) == (7, 0.5, tiny_model_dir.name, "cpu")
    assert HFGenerator(tiny_model_dir, max_new_tokens=7, device="cpu").settings == settings
    with pytest.raises(TypeError, match=r"HFGenerator got unknown setting\(s\) \['max_tokens'\]"):
        HFGenerator(tiny_model_dir, max_tokens=7)
    with pytest.raises(TypeError, match="settings must be an HFSettings"):
        HFGenerator(settings={"model": tiny_model_dir})


async def test_agenerate_forwards_every_keyword_to_generate(scripted_generator):
    gen = scripted_generator(" 7")
    prompts = [[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]]
    out = await gen.agenerate(prompts, max_tokens=[2, 3], stop=["never"], cancel=[None, None])
    assert [g.usage.output_tokens for g in out] == [2, 3]
    with pytest.raises(TypeError, match="budget"):
        await gen.agenerate(prompts, budget=3)


def test_call_settings_resolve_over_the_defaults():
    defaults = CallSettings(max_tokens=100, temperature=0.0, stop=["END"])
    call = defaults.resolve("X", {"max_new_tokens": 5, "temperature": None, "budget": 40})
    assert call == CallSettings(max_tokens=5, temperature=0.0, stop=("END",), budget=40)
    assert defaults.resolve("X", {"stop": []}).stop is None  # no stop strings
    assert defaults.resolve("X", {"max_tokens": 4, "max_new_tokens": 4}).max_tokens == 4
    assert call.for_generate(2) == {"max_tokens": 5, "stop": ("END",), "temperature": 0.0, "budgets": [40, 40]}
    assert call.for_stream()["budget"] == 40
    with pytest.raises(ConflictingSettings, match="disagree.*not both") as caught:
        defaults.resolve("X", {"max_tokens": 4, "max_new_tokens": 5})
    assert isinstance(caught.value, TypeError) and isinstance(caught.value, ValueError)
    with pytest.raises(TypeError, match=r"X got unsupported keyword argument\(s\) \['top_p'\]"):
        defaults.resolve("X", {"top_p": 0.9, "stream": True}, framework=frozenset({"stream"}))
    with pytest.raises(ValueError, match="answer_format must be one of"):
        defaults.resolve("X", {"answer_format": "essay"})
    with pytest.raises(ValueError, match="enforce_budget=True"):
        call.check_enforced("X", enforcing=False)


def test_both_framework_classes_hold_the_same_settings(tiny_model_dir, tiny_generator):
    pytest.importorskip("langchain_core")
    pytest.importorskip("llama_index.core")
    from tale_integrations.langchain import ChatTaleHF
    from tale_integrations.llama_index import TaleHFLLM

    chat = ChatTaleHF(model_path=tiny_model_dir, device="cpu", seed=3)
    llm = TaleHFLLM(model_path=tiny_model_dir, device="cpu", seed=3)
    assert chat.generator.settings == llm.generator.settings
    assert chat.max_tokens is None  # a LangChain max_tokens is a cap the user chose
    assert chat.generator.max_new_tokens == llm.max_new_tokens == HFSettings().max_new_tokens  # one default cap
    assert (chat.max_batch_size, chat.temperature) == (llm.max_batch_size, llm.temperature) == (16, 0.0)
    for cls in (ChatTaleHF, TaleHFLLM):
        with pytest.raises(TypeError, match=r"from_generator\(\) got loading setting\(s\) \['seed'\]"):
            cls.from_generator(tiny_generator, seed=1)
        with pytest.raises(TypeError, match="HFGenerator API"):
            cls.from_generator(object())
    with pytest.raises(TypeError, match=r"ChatTaleHF got unsupported keyword argument\(s\) \['top_k'\]"):
        chat.invoke("hi", top_k=3)
    with pytest.raises(TypeError, match=r"TaleHFLLM got unsupported keyword argument\(s\) \['top_k'\]"):
        llm.complete("hi", top_k=3)


def test_both_framework_classes_declare_the_shared_fields_once(tiny_model_dir):
    pytest.importorskip("langchain_core")
    pytest.importorskip("llama_index.core")
    from tale_integrations._hf_fields import HFModelFields
    from tale_integrations.langchain import ChatTaleHF
    from tale_integrations.llama_index import TaleHFLLM

    shared = set(HFModelFields.model_fields)
    for cls, own in ((ChatTaleHF, {"max_tokens", "stop", "streaming"}),
                     (TaleHFLLM, {"model_name", "max_new_tokens", "context_window"})):
        assert issubclass(cls, HFModelFields) and cls.cap_field in own
        assert shared | own <= set(cls.model_fields) and not shared & set(cls.__annotations__)
        assert cls.model_config["extra"] == "forbid"
        made = cls(model_path=tiny_model_dir, adapter_path=None, device="cpu")  # a path becomes a str
        assert made.model_path == str(tiny_model_dir) and not made.generator.is_loaded
    # The framework's own post-init still runs (LangChain records its versions in the metadata there).
    assert "lc_versions" in ChatTaleHF(model_path=tiny_model_dir, device="cpu").metadata
