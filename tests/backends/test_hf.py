"""HFGenerator on tiny real models (fast) and on the embedded SmolLM2 model (`slow`)."""

from __future__ import annotations

import asyncio
import threading

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from tale_integrations.backends.hf import HFGenerator  # noqa: E402
from tale_integrations.core.generation import Generator, PromptTooLongError  # noqa: E402


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def reference_generate(model, tokenizer, messages, max_new_tokens):
    """Unbatched greedy generation straight through transformers, for comparison."""
    enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(
        **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return enc["input_ids"].shape[1], out[0, enc["input_ids"].shape[1]:].tolist()


def test_is_a_generator(tiny_generator):
    assert isinstance(tiny_generator, Generator)


def test_exact_usage_and_only_new_text(tiny_generator, tiny_model, tiny_tokenizer):
    messages = chat("What is 2 + 3?")
    [gen] = tiny_generator.generate([messages], max_tokens=6)
    n_in, new_ids = reference_generate(tiny_model, tiny_tokenizer, messages, 6)
    assert gen.usage.input_tokens == n_in
    assert gen.usage.output_tokens == len(new_ids)
    assert gen.text == tiny_tokenizer.decode(new_ids, skip_special_tokens=True)
    assert "What is 2 + 3?" not in gen.text
    assert gen.model == "tiny-llama"
    assert gen.usage.counter == "hf:tiny-llama"


def test_batch_equals_one_at_a_time(tiny_generator):
    prompts = [chat("hi"), chat("a much longer question that needs left padding in the batch"), chat("Q: 2+2?")]
    batched = tiny_generator.generate(prompts, max_tokens=8)
    single = [tiny_generator.generate([p], max_tokens=8)[0] for p in prompts]
    assert [g.text for g in batched] == [g.text for g in single]
    assert [g.usage for g in batched] == [g.usage for g in single]


def test_batches_larger_than_max_batch_size_keep_order(tiny_model, tiny_tokenizer):
    gen = HFGenerator.from_model(tiny_model, tiny_tokenizer, max_batch_size=2)
    prompts = [chat("x" * n) for n in (9, 1, 5, 3, 7)]
    out = gen.generate(prompts, max_tokens=3)
    assert [g.usage.input_tokens for g in out] == [len(gen.encode_chat(p)) for p in prompts]


def test_per_call_max_tokens_and_length_finish(scripted_generator):
    gen = scripted_generator(" 7")
    [g] = gen.generate([chat("count")], max_tokens=5)
    assert g.usage.output_tokens == 5
    assert g.finish_reason == "length"
    assert g.text == " 7" * 5


def test_end_of_turn_token_ends_the_answer(scripted_generator, tiny_tokenizer):
    gen = scripted_generator(tiny_tokenizer.eos_token)
    [g] = gen.generate([chat("anything")], max_tokens=10)
    assert g.finish_reason == "stop"
    assert g.text == ""
    assert g.usage.output_tokens == 1  # the end-of-turn token itself


def test_stop_string_cuts_text_and_counts_tokens_up_to_it(scripted_generator):
    gen = scripted_generator(" 7")
    [g] = gen.generate([chat("count")], max_tokens=20, stop=["7 7 7"])
    assert g.finish_reason == "stop"
    assert g.usage.output_tokens == 3
    assert g.text == " "


def test_stop_strings_apply_per_row(scripted_generator):
    gen = scripted_generator("STOP")
    out = gen.generate([chat("a"), chat("a longer prompt")], max_tokens=6, stop=["STOPSTOP"])
    assert [g.usage.output_tokens for g in out] == [2, 2]
    assert [g.text for g in out] == ["", ""]


def test_default_max_new_tokens_applies(scripted_generator):
    gen = scripted_generator(" 7", max_new_tokens=4)
    assert gen.generate([chat("x")])[0].usage.output_tokens == 4


def test_sampling_with_seed_is_repeatable(tiny_model, tiny_tokenizer):
    gen = HFGenerator.from_model(tiny_model, tiny_tokenizer, seed=1024)
    a = gen.generate([chat("hello")], max_tokens=8, temperature=1.0)
    b = gen.generate([chat("hello")], max_tokens=8, temperature=1.0)
    assert a[0].text == b[0].text


async def test_agenerate_matches_generate(tiny_generator):
    prompts = [chat("one"), chat("two two")]
    sync = tiny_generator.generate(prompts, max_tokens=5)
    result = await tiny_generator.agenerate(prompts, max_tokens=5)
    assert [g.text for g in result] == [g.text for g in sync]


async def test_concurrent_async_calls_share_one_model(tiny_generator):
    prompts = [[chat(f"question {i}")] for i in range(4)]
    expected = [tiny_generator.generate(p, max_tokens=4)[0].text for p in prompts]
    results = await asyncio.gather(*(tiny_generator.agenerate(p, max_tokens=4) for p in prompts))
    assert [r[0].text for r in results] == expected


def test_threads_share_one_model_safely(tiny_generator):
    prompts = [chat(f"thread {i}") for i in range(6)]
    expected = [tiny_generator.generate([p], max_tokens=4)[0].text for p in prompts]
    got: dict[int, str] = {}

    def work(i):
        got[i] = tiny_generator.generate([prompts[i]], max_tokens=4)[0].text

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [got[i] for i in range(len(prompts))] == expected


def test_prompt_longer_than_context_is_refused(tiny_tokenizer):
    from tiny_models import build_tiny_model

    gen = HFGenerator.from_model(build_tiny_model(tiny_tokenizer, max_positions=32), tiny_tokenizer)
    with pytest.raises(PromptTooLongError, match="context window of 32"):
        gen.generate([chat("word " * 50)])


def test_answer_room_is_clamped_to_the_context(tiny_tokenizer):
    from tiny_models import build_tiny_model

    gen = HFGenerator.from_model(build_tiny_model(tiny_tokenizer, max_positions=32), tiny_tokenizer)
    prompt = chat("abc")
    n_in = len(gen.encode_chat(prompt))
    [g] = gen.generate([prompt], max_tokens=1000)
    assert g.usage.input_tokens + g.usage.output_tokens <= 32
    assert g.usage.output_tokens <= 32 - n_in


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_tokens": 0}, ValueError, "max_tokens"),
        ({"max_tokens": -3}, ValueError, "max_tokens"),
        ({"stop": "STOP"}, ValueError, "stop"),
        ({"stop": [""]}, ValueError, "stop"),
        ({"temperature": -1}, ValueError, "temperature"),
    ],
)
def test_bad_call_arguments(tiny_generator, kwargs, error, match):
    with pytest.raises(error, match=match):
        tiny_generator.generate([chat("x")], **kwargs)


@pytest.mark.parametrize(
    ("prompts", "error"),
    [
        ("just a string", TypeError),
        (["just a string"], TypeError),
        ([[]], ValueError),
        ([[{"role": "robot", "content": "x"}]], ValueError),
        ([[{"role": "user", "content": 3}]], TypeError),
        ([[{"role": "user", "content": "  "}]], ValueError),
        ([[{"role": "system", "content": ""}, {"role": "user", "content": ""}]], ValueError),
    ],
)
def test_bad_prompts(tiny_generator, prompts, error):
    with pytest.raises(error):
        tiny_generator.generate(prompts)


def test_loads_lazily_from_a_folder(tiny_model_dir, tiny_model, tiny_tokenizer):
    gen = HFGenerator(tiny_model_dir, device="cpu")
    assert not gen.is_loaded
    assert gen.model_name == tiny_model_dir.name
    [g] = gen.generate([chat("What is 2 + 3?")], max_tokens=6)
    assert gen.is_loaded
    assert gen.model.dtype == torch.float32
    n_in, new_ids = reference_generate(tiny_model, tiny_tokenizer, chat("What is 2 + 3?"), 6)
    assert (g.usage.input_tokens, g.usage.output_tokens) == (n_in, len(new_ids))


def test_missing_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        HFGenerator(tmp_path / "nowhere")


def test_folder_without_config_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="config.json"):
        HFGenerator(tmp_path)


def test_corrupt_weights_are_a_clear_error(tmp_path, tiny_model_dir):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    gen = HFGenerator(broken)
    with pytest.raises(OSError, match="could not load the model"):
        gen.load()


def test_tokenizer_without_chat_template_is_refused(tiny_model):
    from tiny_models import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    tok.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        HFGenerator.from_model(tiny_model, tok)


@pytest.mark.parametrize(("kwargs", "match"), [({"max_new_tokens": 0}, "max_new_tokens"),
                                               ({"max_batch_size": 0}, "max_batch_size"),
                                               ({"temperature": 5}, "temperature"),
                                               ({"dtype": "float64"}, "dtype")])
def test_bad_constructor_arguments(tiny_model_dir, kwargs, match):
    with pytest.raises(ValueError, match=match):
        HFGenerator(tiny_model_dir, **kwargs).load()


def test_token_counter_uses_the_model_tokenizer(tiny_generator, tiny_tokenizer):
    counter = tiny_generator.token_counter()
    assert counter.count("[[40]]") == 1
    assert counter.count("Let's think step by step") == len(tiny_tokenizer.encode("Let's think step by step"))


@pytest.mark.gpu
def test_cuda_defaults_to_bfloat16(tiny_model_dir):
    gen = HFGenerator(tiny_model_dir).load()
    assert gen.model.device.type == "cuda"
    assert gen.model.dtype == torch.bfloat16
    [g] = gen.generate([chat("hi")], max_tokens=4)
    assert g.usage.output_tokens >= 1


# -- the embedded model ---------------------------------------------------------------------------


@pytest.mark.slow
def test_embedded_model_loads_and_counts_exactly(embedded_generator):
    messages = chat("What is 12 plus 30? Reply with the number only.")
    [g] = embedded_generator.generate([messages], max_tokens=24)
    n_in, new_ids = reference_generate(embedded_generator.model, embedded_generator.tokenizer, messages, 24)
    assert g.usage.input_tokens == n_in
    assert g.usage.output_tokens == len(new_ids)
    assert g.text == embedded_generator.tokenizer.decode(new_ids, skip_special_tokens=True)
    assert embedded_generator.model_name == "SmolLM2-135M-Instruct"
    assert embedded_generator.context_window == 8192


@pytest.mark.slow
def test_embedded_batch_equals_single(embedded_generator):
    prompts = [chat("Name a fruit."), chat("What is the capital of France? Answer in one word.")]
    batched = embedded_generator.generate(prompts, max_tokens=12)
    single = [embedded_generator.generate([p], max_tokens=12)[0] for p in prompts]
    assert [g.text for g in batched] == [g.text for g in single]


def test_per_prompt_caps_in_one_batch(scripted_generator):
    gen = scripted_generator(" 7")
    out = gen.generate([chat("a"), chat("b"), chat("c")], max_tokens=[3, 7, None])
    room = gen.context_window - len(gen.encode_chat(chat("c")))  # the default cap, lowered to the context
    assert [g.usage.output_tokens for g in out] == [3, 7, min(gen.max_new_tokens, room)]
    assert [g.text for g in out[:2]] == [" 7" * 3, " 7" * 7]
    assert all(g.finish_reason == "length" for g in out)


def test_a_cancelled_row_stops_while_others_go_on(scripted_generator):
    event = threading.Event()
    event.set()
    gen = scripted_generator(" 7")
    cancelled, kept = gen.generate([chat("a"), chat("b")], max_tokens=6, cancel=[event, None])
    assert cancelled.usage.output_tokens <= 1
    assert kept.usage.output_tokens == 6


def test_per_prompt_caps_must_match_the_batch(tiny_generator):
    with pytest.raises(ValueError, match="per prompt"):
        tiny_generator.generate([chat("a")], max_tokens=[3, 4])


def test_config_facts_and_empty_batches_load_no_weights(tiny_model_dir):
    gen = HFGenerator(tiny_model_dir)
    assert gen.context_window == 256
    assert gen.generate([]) == []
    assert not gen.is_loaded


def test_a_short_prompt_keeps_its_room_beside_a_long_one(scripted_generator, tiny_tokenizer):
    from tiny_models import build_tiny_model, script_model

    from tale_integrations.backends.hf import HFGenerator

    model = script_model(build_tiny_model(tiny_tokenizer, max_positions=64), tiny_tokenizer.convert_tokens_to_ids(" 7"))
    gen = HFGenerator.from_model(model, tiny_tokenizer)
    short, long = chat("a"), chat("word " * 5)
    n_short, n_long = len(gen.encode_chat(short)), len(gen.encode_chat(long))
    out = gen.generate([short, long], max_tokens=60)
    assert out[0].usage.output_tokens == min(60, 64 - n_short)
    assert out[1].usage.output_tokens == 64 - n_long


def test_a_chat_template_replaces_the_models_own_without_changing_its_tokenizer(tiny_model, tiny_tokenizer):
    from tale_integrations.core.prompts import PAPER_CHAT_TEMPLATE, SCRIPTS_SYSTEM_PROMPT

    own = tiny_tokenizer.chat_template
    gen = HFGenerator.from_model(tiny_model, tiny_tokenizer, chat_template=PAPER_CHAT_TEMPLATE)
    messages = [{"role": "system", "content": SCRIPTS_SYSTEM_PROMPT}, {"role": "user", "content": "Q: 2+3?\n"}]
    raw = "You are a helpful assistant.\nUser: Q: 2+3?\n\nAssistant:"
    assert gen.encode_chat(messages) == tiny_tokenizer(raw, add_special_tokens=False)["input_ids"]
    assert tiny_tokenizer.chat_template == own
    [out] = gen.generate([messages], max_tokens=3)
    assert out.usage.input_tokens == len(gen.encode_chat(messages))
    with pytest.raises(ValueError, match="chat_template"):
        HFGenerator(chat_template="  ")


def test_the_package_exports_the_generator_and_its_settings():
    import tale_integrations.backends.hf as hf

    assert hf.__all__ == ["HFGenerator", "HFSettings"]
    assert hf.HFSettings().max_new_tokens == HFGenerator().max_new_tokens == 512  # nothing loads
