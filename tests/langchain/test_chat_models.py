"""`ChatTaleHF` over real tiny models (fast) and the embedded SmolLM2 model (`slow`).

Exact assertions use "scripted" tiny models from the root conftest: ``scripted_generator(" 7")``
greedily emits " 7" at every step, so every count is known in advance.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("torch")

from langchain_core.callbacks import BaseCallbackHandler  # noqa: E402
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage  # noqa: E402

from tale_integrations.core.budget import BudgetEnforcement  # noqa: E402
from tale_integrations.langchain import ChatTaleHF  # noqa: E402
from tale_integrations.langchain.chat_models import to_conversation  # noqa: E402

QUESTION = "What is 2 + 3?"
PROMPTS = ["Hi", "What is 2 + 3?", "Let's think step by step and use less than 40 tokens: what is 7?"]


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def spy(generator: Any, name: str) -> list[dict[str, Any]]:
    """Record the calls of ``generator.<name>`` (sync or async), still running the real method."""
    calls: list[dict[str, Any]] = []
    original = getattr(generator, name)
    if name.startswith("a"):
        async def wrapper(prompts, **kwargs):
            calls.append({"prompts": prompts, **kwargs})
            return await original(prompts, **kwargs)
    else:
        def wrapper(prompts, **kwargs):
            calls.append({"prompts": prompts, **kwargs})
            return original(prompts, **kwargs)
    setattr(generator, name, wrapper)
    return calls


class Recorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.started: list[Any] = []
        self.ended: list[Any] = []
        self.tokens: list[str] = []

    def on_chat_model_start(self, serialized, messages, *, run_id, **kwargs):
        self.started.append((run_id, messages[0][-1].content))

    def on_llm_end(self, response, *, run_id, **kwargs):
        self.ended.append((run_id, response.generations[0][0].text))

    def on_llm_new_token(self, token, **kwargs):
        self.tokens.append(token)


@pytest.fixture()
def sevens(scripted_generator):
    gen = scripted_generator(" 7", model_name="sevens")
    return gen, ChatTaleHF.from_generator(gen)


# -- invoke: text, usage, metadata ----------------------------------------------------------------


def test_invoke_returns_only_the_backend_text(tiny_generator):
    chat = ChatTaleHF.from_generator(tiny_generator)
    reply = chat.invoke(QUESTION, max_tokens=6)
    [expected] = tiny_generator.generate([user(QUESTION)], max_tokens=6)
    assert isinstance(reply, AIMessage)
    assert reply.content == expected.text
    assert QUESTION not in reply.content and "user" not in reply.content


def test_usage_metadata_is_exact(sevens):
    gen, chat = sevens
    reply = chat.invoke(QUESTION, max_tokens=5)
    n_in = len(gen.encode_chat(user(QUESTION)))
    assert reply.usage_metadata == {"input_tokens": n_in, "output_tokens": 5, "total_tokens": n_in + 5}
    assert reply.content == " 7" * 5
    assert chat.get_num_tokens_from_messages([HumanMessage(QUESTION)]) == n_in


def test_response_metadata(sevens, scripted_generator):
    _, chat = sevens
    meta = chat.invoke(QUESTION, max_tokens=3).response_metadata
    assert meta["model_name"] == "sevens"
    assert meta["finish_reason"] == "length"
    assert meta["model_provider"] == "tale-hf"
    assert meta["token_usage"]["output_tokens"] == 3
    silent = ChatTaleHF.from_generator(scripted_generator("<|im_end|>", model_name="eos"))
    reply = silent.invoke(QUESTION)
    assert (reply.content, reply.response_metadata["finish_reason"]) == ("", "stop")
    assert reply.usage_metadata["output_tokens"] == 1  # the end-of-turn token counts


def test_max_tokens_per_call_alias_and_default(sevens, scripted_generator):
    _, chat = sevens
    assert chat.invoke(QUESTION, max_tokens=5).usage_metadata["output_tokens"] == 5
    assert chat.invoke(QUESTION, max_new_tokens=2).usage_metadata["output_tokens"] == 2
    assert chat.bind(max_tokens=4).invoke(QUESTION).usage_metadata["output_tokens"] == 4
    capped = ChatTaleHF.from_generator(scripted_generator(" 7"), max_tokens=3)
    assert capped.invoke(QUESTION).usage_metadata["output_tokens"] == 3
    assert capped.invoke(QUESTION, max_tokens=7).usage_metadata["output_tokens"] == 7
    with pytest.raises(TypeError, match="not both"):
        chat.invoke(QUESTION, max_tokens=2, max_new_tokens=3)


def test_stop_sequences_trim(sevens, scripted_generator):
    _, chat = sevens
    reply = chat.invoke(QUESTION, stop=["7 7"], max_tokens=20)
    assert reply.content == " "
    assert reply.response_metadata["finish_reason"] == "stop"
    assert chat.invoke(QUESTION, stop=["never"], max_tokens=4).content == " 7" * 4
    default_stop = ChatTaleHF.from_generator(scripted_generator(" 7"), stop=["7 7"], max_tokens=20)
    assert default_stop.invoke(QUESTION).content == " "


def test_temperature_and_budget_reach_the_backend(sevens):
    gen, chat = sevens
    calls = spy(gen, "generate")
    chat.invoke(QUESTION, max_tokens=2, temperature=0.7)
    assert calls[-1]["temperature"] == 0.7 and calls[-1]["budgets"] is None


def test_budget_is_enforced_while_decoding(scripted_generator):
    gen = scripted_generator(" 7", enforce_budget=True)
    chat = ChatTaleHF.from_generator(gen, max_tokens=200)
    free = chat.invoke(QUESTION)
    held = chat.invoke(QUESTION, budget=10)
    assert free.usage_metadata["output_tokens"] == 200
    assert held.usage_metadata["output_tokens"] <= 10 + BudgetEnforcement().answer_reserve
    assert held.response_metadata["finish_reason"] == "stop"
    default = ChatTaleHF.from_generator(gen, max_tokens=200, budget=10)
    assert default.invoke(QUESTION).content == held.content


def test_budget_without_enforcement_is_an_error(sevens):
    _, chat = sevens
    with pytest.raises(ValueError, match="enforce_budget"):
        chat.invoke(QUESTION, budget=10)
    with pytest.raises(ValueError, match="enforce_budget"):
        ChatTaleHF(budget=10)


def test_unknown_kwargs_raise(sevens):
    _, chat = sevens
    with pytest.raises(TypeError, match="max_new_token"):
        chat.invoke(QUESTION, max_new_token=3)
    with pytest.raises(TypeError, match="'model'"):
        chat.invoke(QUESTION, model="other")
    with pytest.raises(TypeError, match="top_p"):
        list(chat.stream(QUESTION, top_p=0.5))
    with pytest.raises(ValueError, match="max_token"):  # constructor: pydantic forbids unknown fields
        ChatTaleHF(max_token=3)


# -- streaming ------------------------------------------------------------------------------------


def test_stream_joins_to_invoke(sevens):
    _, chat = sevens
    reply = chat.invoke(QUESTION, max_tokens=5)
    chunks = list(chat.stream(QUESTION, max_tokens=5))
    assert len(chunks) >= 5
    assert "".join(c.content for c in chunks) == reply.content
    assert chunks[-1].chunk_position == "last"
    assert chunks[-1].usage_metadata == reply.usage_metadata
    assert [c for c in chunks if c.usage_metadata] == [chunks[-1]]  # usage counted once
    assert chunks[-1].response_metadata["finish_reason"] == "length"
    assert chunks[-1].response_metadata["model_name"] == "sevens"


def test_stream_with_stop_and_immediate_end(sevens, scripted_generator):
    _, chat = sevens
    chunks = list(chat.stream(QUESTION, stop=["7 7 7"], max_tokens=20))
    assert "".join(c.content for c in chunks) == chat.invoke(QUESTION, stop=["7 7 7"], max_tokens=20).content
    silent = ChatTaleHF.from_generator(scripted_generator("<|im_end|>"))
    [only] = list(silent.stream(QUESTION))
    assert only.content == "" and only.usage_metadata["output_tokens"] == 1


async def test_astream_joins_to_ainvoke(sevens):
    gen, chat = sevens
    reply = await chat.ainvoke(QUESTION, max_tokens=5)
    chunks = [c async for c in chat.astream(QUESTION, max_tokens=5)]
    assert len(chunks) >= 5
    assert "".join(c.content for c in chunks) == reply.content == " 7" * 5
    assert chunks[-1].chunk_position == "last"
    assert chunks[-1].usage_metadata == reply.usage_metadata


def test_streaming_flag_and_tokens_reach_callbacks(scripted_generator):
    chat = ChatTaleHF.from_generator(scripted_generator(" 7"), streaming=True, max_tokens=4)
    recorder = Recorder()
    reply = chat.invoke(QUESTION, config={"callbacks": [recorder]})
    assert "".join(recorder.tokens) == reply.content == " 7" * 4
    assert reply.usage_metadata["output_tokens"] == 4


async def test_ainvoke_is_async_and_equals_invoke(sevens):
    gen, chat = sevens
    calls = spy(gen, "agenerate")
    reply = await chat.ainvoke(QUESTION, max_tokens=3)
    assert len(calls) == 1
    assert reply.content == chat.invoke(QUESTION, max_tokens=3).content
    assert reply.usage_metadata == chat.invoke(QUESTION, max_tokens=3).usage_metadata


# -- batching -------------------------------------------------------------------------------------


def test_batch_makes_one_backend_call_in_order(tiny_generator):
    chat = ChatTaleHF.from_generator(tiny_generator, max_tokens=4)
    singles = [chat.invoke(p) for p in PROMPTS]
    calls = spy(tiny_generator, "generate")
    replies = chat.batch(PROMPTS)
    assert len(calls) == 1 and len(calls[0]["prompts"]) == len(PROMPTS)
    assert [r.content for r in replies] == [s.content for s in singles]
    assert [r.usage_metadata["input_tokens"] for r in replies] == [
        len(tiny_generator.encode_chat(user(p))) for p in PROMPTS
    ]


async def test_abatch_makes_one_backend_call(tiny_generator):
    chat = ChatTaleHF.from_generator(tiny_generator, max_tokens=4)
    singles = [chat.invoke(p) for p in PROMPTS]
    calls, acalls = spy(tiny_generator, "generate"), spy(tiny_generator, "agenerate")
    replies = await chat.abatch(PROMPTS)
    assert len(acalls) == 1 and len(calls) == 1 and len(calls[0]["prompts"]) == len(PROMPTS)
    assert [r.usage_metadata for r in replies] == [s.usage_metadata for s in singles]


def test_batch_callbacks_fire_per_input(sevens):
    gen, chat = sevens
    calls = spy(gen, "generate")
    recorder = Recorder()
    replies = chat.batch(PROMPTS, config={"callbacks": [recorder]}, max_tokens=2)
    assert len(calls) == 1
    assert sorted(text for _, text in recorder.started) == sorted(PROMPTS)
    assert {run for run, _ in recorder.started} == {run for run, _ in recorder.ended}
    assert len(recorder.ended) == len(PROMPTS) and all(r.content == " 7 7" for r in replies)


def test_generate_with_several_message_lists_batches(sevens):
    gen, chat = sevens
    calls = spy(gen, "generate")
    recorder = Recorder()
    result = chat.generate([[HumanMessage(p)] for p in PROMPTS], callbacks=[recorder], max_tokens=3)
    assert len(calls) == 1
    assert [r for r, _ in recorder.started] == [r for r, _ in recorder.ended] == [run.run_id for run in result.run]
    assert result.llm_output["token_usage"]["output_tokens"] == 3 * len(PROMPTS)


async def test_agenerate_with_several_message_lists_batches(sevens):
    gen, chat = sevens
    calls = spy(gen, "generate")
    result = await chat.agenerate([[HumanMessage(p)] for p in PROMPTS], max_tokens=3)
    assert len(calls) == 1 and [g[0].text for g in result.generations] == [" 7 7 7"] * len(PROMPTS)


def test_batch_isolates_a_bad_input(sevens):
    gen, chat = sevens
    image = HumanMessage([{"type": "image_url", "image_url": {"url": "http://x/y.png"}}])
    calls = spy(gen, "generate")
    out = chat.batch([PROMPTS[0], [image], PROMPTS[1]], return_exceptions=True, max_tokens=2)
    assert isinstance(out[1], ValueError) and "text-only" in str(out[1])
    assert out[0].content == out[2].content == " 7 7"
    assert len(calls) == 1
    too_long = "7 " * 400  # past the tiny model's 256-token window: the batched call fails, each input retries alone
    out = chat.batch([PROMPTS[0], too_long], return_exceptions=True, max_tokens=2)
    assert out[0].content == " 7 7" and "context window" in str(out[1])


# -- messages -------------------------------------------------------------------------------------


def test_message_conversion():
    history = [
        SystemMessage("Be brief."),
        HumanMessage([{"type": "text", "text": "Add "}, "2 and 3"]),
        AIMessage("", tool_calls=[{"name": "add", "args": {"a": 2, "b": 3}, "id": "c1"}]),
        ToolMessage("5", tool_call_id="c1", name="add"),
    ]
    assert to_conversation(history) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Add 2 and 3"},
        {"role": "assistant", "content": 'Tool call (add): {"a": 2, "b": 3}'},
        {"role": "user", "content": "Tool result (add): 5"},
    ]
    with pytest.raises(ValueError, match="text-only"):
        to_conversation([HumanMessage([{"type": "image", "url": "http://x/y.png"}])])
    with pytest.raises(ValueError, match="empty"):
        to_conversation([])


def test_any_last_message_works(sevens):
    gen, chat = sevens
    with_tool = [HumanMessage("Add 2 and 3"), AIMessage("", tool_calls=[{"name": "add", "args": {}, "id": "c"}]),
                 ToolMessage("5", tool_call_id="c", name="add")]
    assert chat.invoke(with_tool, max_tokens=2).content == " 7 7"
    with_ai = [HumanMessage("Hi"), AIMessage("Hello")]
    reply = chat.invoke(with_ai, max_tokens=2)
    assert reply.usage_metadata["input_tokens"] == len(gen.encode_chat(to_conversation(with_ai)))


# -- tokens, construction, packaging --------------------------------------------------------------


def test_token_counts_use_the_models_tokenizer(tiny_generator, tiny_tokenizer):
    chat = ChatTaleHF.from_generator(tiny_generator)
    text = "Let's think step by step and use less than 40 tokens:"
    assert chat.get_num_tokens(text) == len(tiny_tokenizer.encode(text, add_special_tokens=False))
    assert chat.get_token_ids(text) == tiny_tokenizer.encode(text, add_special_tokens=False)


def test_construction_loads_nothing(tiny_model_dir):
    chat = ChatTaleHF(model_path=str(tiny_model_dir), device="cpu", max_tokens=3)
    assert not chat.generator.is_loaded
    assert chat.model_name == tiny_model_dir.name
    assert chat._get_ls_params()["ls_model_name"] == tiny_model_dir.name
    assert chat.invoke("Hi").usage_metadata["output_tokens"] <= 3
    assert chat.generator.is_loaded


def test_bad_settings_fail_at_construction(tmp_path, sevens):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ChatTaleHF(model_path=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="temperature"):
        ChatTaleHF(temperature=3)
    with pytest.raises(TypeError, match="device"):
        ChatTaleHF.from_generator(sevens[0], device="cpu")


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)


def test_missing_extra_names_the_extra_and_import_stays_light():
    proc = run_python(
        """
        import sys
        sys.modules["langchain_core"] = None
        try:
            import tale_integrations.langchain
        except ImportError as exc:
            print(exc)
        """
    )
    assert 'pip install "tale-integrations[langchain]"' in proc.stdout, proc.stderr
    proc = run_python("import sys, tale_integrations.langchain; print('torch' in sys.modules)")
    assert proc.stdout.strip() == "False", proc.stderr


# -- the embedded model ---------------------------------------------------------------------------


@pytest.mark.slow
def test_embedded_model_invoke_stream_and_usage(embedded_generator):
    chat = ChatTaleHF.from_generator(embedded_generator, max_tokens=24)
    question = "What is 12 plus 30? Reply with the number only."
    reply = chat.invoke(question)
    [expected] = embedded_generator.generate([user(question)], max_tokens=24)
    assert reply.content == expected.text and reply.content.strip()
    assert reply.usage_metadata["input_tokens"] == len(embedded_generator.encode_chat(user(question)))
    assert reply.usage_metadata["output_tokens"] == expected.usage.output_tokens
    assert reply.response_metadata["model_name"] == "SmolLM2-135M-Instruct"
    chunks = list(chat.stream(question))
    assert len(chunks) > 1
    assert "".join(c.content for c in chunks) == reply.content
    assert chunks[-1].usage_metadata == reply.usage_metadata
