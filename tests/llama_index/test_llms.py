"""`TaleHFLLM` on real tiny models: chat template, exact usage, per-call settings, streams, batches, RAG."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("llama_index.core")
pytest.importorskip("torch")
pytest.importorskip("transformers")

from llama_index.core import Settings, VectorStoreIndex  # noqa: E402
from llama_index.core.base.llms.types import ImageBlock, TextBlock  # noqa: E402
from llama_index.core.callbacks import CallbackManager, TokenCountingHandler  # noqa: E402
from llama_index.core.embeddings import MockEmbedding  # noqa: E402
from llama_index.core.instrumentation import get_dispatcher  # noqa: E402
from llama_index.core.instrumentation.event_handlers import BaseEventHandler  # noqa: E402
from llama_index.core.instrumentation.events.llm import LLMChatEndEvent, LLMCompletionEndEvent  # noqa: E402
from llama_index.core.llms import ChatMessage, MessageRole  # noqa: E402
from llama_index.core.schema import TextNode  # noqa: E402

from tale_integrations.backends.hf import HFGenerator  # noqa: E402
from tale_integrations.llama_index import TaleHFLLM  # noqa: E402
from tale_integrations.llama_index.llms import TOOL_RESULT_PREFIX, to_backend_messages  # noqa: E402

QUESTION = [
    ChatMessage(role=MessageRole.SYSTEM, content="Answer briefly."),
    ChatMessage(role=MessageRole.USER, content="What is 2 + 3?"),
]
AS_DICTS = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 2 + 3?"}]


def usage_of(gen: HFGenerator, messages, output_tokens: int) -> dict[str, int]:
    n_in = len(gen.encode_chat(messages))
    return {"prompt_tokens": n_in, "completion_tokens": output_tokens, "total_tokens": n_in + output_tokens}


class Spy:
    """Wraps one generator method, recording each call's arguments."""

    def __init__(self, monkeypatch, gen, name):
        self.calls = []
        inner = getattr(gen, name)

        def spy(prompts, **kwargs):
            self.calls.append((prompts, kwargs))
            return inner(prompts, **kwargs)

        monkeypatch.setattr(gen, name, spy)


class Collector(BaseEventHandler):
    events: list = []

    @classmethod
    def class_name(cls) -> str:
        return "Collector"

    def handle(self, event, **kwargs):
        self.events.append(event)


@pytest.fixture()
def events():
    root = get_dispatcher()
    handler = Collector(events=[])
    root.add_event_handler(handler)
    yield handler.events
    root.event_handlers.remove(handler)


@pytest.fixture()
def wide_scripted(tiny_tokenizer):
    """A scripted " 7" generator whose context window (4096) holds LlamaIndex's long RAG prompts."""
    from tiny_models import build_tiny_model, script_model

    [token_id] = tiny_tokenizer.convert_tokens_to_ids([" 7"])
    model = script_model(build_tiny_model(tiny_tokenizer, max_positions=4096), token_id)
    return HFGenerator.from_model(model, tiny_tokenizer, model_name="scripted-wide")


# -- packaging and construction -----------------------------------------------------------------


def test_the_real_llama_index_package_is_imported():
    import llama_index.core

    assert "site-packages" in llama_index.core.__file__


def test_missing_extra_names_the_extra_to_install():
    code = """
        import sys
        sys.modules["llama_index.core"] = None  # makes the import fail
        try:
            import tale_integrations.llama_index
        except ImportError as exc:
            print(exc)
    """
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert 'pip install "tale-integrations[llamaindex]"' in proc.stdout


def test_construction_loads_no_weights(tiny_model_dir):
    llm = TaleHFLLM(model_path=tiny_model_dir, max_new_tokens=7, context_window=100)
    assert not llm.generator.is_loaded
    meta = llm.metadata  # an explicit context_window keeps metadata lazy
    assert (meta.context_window, meta.num_output, meta.is_chat_model) == (100, 7, True)
    assert meta.model_name == tiny_model_dir.name
    assert not llm.generator.is_loaded
    assert TaleHFLLM(model_path=str(tiny_model_dir)).metadata.context_window == 256  # read from the model


def test_bad_settings_fail_at_construction(tmp_path, tiny_generator):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TaleHFLLM(model_path=tmp_path / "missing")
    with pytest.raises(ValueError, match="max_tokens"):  # not a field: a typo must not pass silently
        TaleHFLLM(max_tokens=5)
    with pytest.raises(ValueError, match="enforce_budget"):
        TaleHFLLM(budget=40)
    with pytest.raises(TypeError, match="device"):
        TaleHFLLM.from_generator(tiny_generator, device="cpu")
    with pytest.raises(TypeError, match="HFGenerator API"):
        TaleHFLLM.from_generator(object())


def test_from_generator_takes_the_generator_defaults(scripted_generator):
    gen = scripted_generator(" 7", max_new_tokens=3, temperature=0.0)
    llm = TaleHFLLM.from_generator(gen)
    assert (llm.max_new_tokens, llm.model_name, llm.enforce_budget) == (3, "scripted", False)
    assert llm.chat(QUESTION).raw["usage"]["completion_tokens"] == 3


# -- chat and complete ----------------------------------------------------------------------------


def test_chat_returns_the_backend_text_and_exact_usage(tiny_generator):
    llm = TaleHFLLM.from_generator(tiny_generator, max_new_tokens=6)
    response = llm.chat(QUESTION)
    [expected] = tiny_generator.generate([AS_DICTS], max_tokens=6)
    assert response.message.role == MessageRole.ASSISTANT
    assert response.message.content == expected.text
    assert "What is 2 + 3?" not in response.message.content and "<|im_start|>" not in response.message.content
    usage = usage_of(tiny_generator, AS_DICTS, expected.usage.output_tokens)
    assert response.raw["usage"] == usage
    assert response.additional_kwargs == usage
    assert response.raw["model"] == "tiny-llama"
    assert response.raw["finish_reason"] == expected.finish_reason
    assert response.raw["token_counter"] == "hf:tiny-llama"


def test_complete_sends_the_prompt_as_one_user_message(tiny_generator, monkeypatch):
    llm = TaleHFLLM.from_generator(tiny_generator, max_new_tokens=5, completion_to_prompt=lambda p: f"Q: {p}")
    spy = Spy(monkeypatch, tiny_generator, "generate")
    response = llm.complete("2 + 2?")
    assert spy.calls[0][0] == [[{"role": "user", "content": "Q: 2 + 2?"}]]
    formatted = llm.complete("2 + 2?", formatted=True)  # formatted prompts go as they are
    assert spy.calls[1][0] == [[{"role": "user", "content": "2 + 2?"}]]
    [expected] = tiny_generator.generate([[{"role": "user", "content": "Q: 2 + 2?"}]], max_tokens=5)
    assert response.text == expected.text
    assert response.raw["usage"] == usage_of(tiny_generator, spy.calls[0][0][0], expected.usage.output_tokens)
    assert formatted.additional_kwargs["prompt_tokens"] == len(tiny_generator.encode_chat(spy.calls[1][0][0]))


def test_token_counting_handler_takes_the_exact_counts(tiny_generator):
    handler = TokenCountingHandler()  # tiktoken by default: any fallback would give other numbers
    llm = TaleHFLLM.from_generator(tiny_generator, max_new_tokens=4, callback_manager=CallbackManager([handler]))
    chat, completion = llm.chat(QUESTION), llm.complete("Count to three.")
    *_, last = llm.stream_chat(QUESTION)
    responses = [chat, completion, last]
    assert [e.prompt_token_count for e in handler.llm_token_counts] == [
        r.raw["usage"]["prompt_tokens"] for r in responses
    ]
    assert [e.completion_token_count for e in handler.llm_token_counts] == [
        r.raw["usage"]["completion_tokens"] for r in responses
    ]
    assert handler.prompt_llm_token_count == 2 * len(tiny_generator.encode_chat(AS_DICTS)) + len(
        tiny_generator.encode_chat([{"role": "user", "content": "Count to three."}])
    )
    assert handler.completion_llm_token_count == sum(r.raw["usage"]["completion_tokens"] for r in responses)


def test_instrumentation_events_carry_the_usage(tiny_generator, events):
    llm = TaleHFLLM.from_generator(tiny_generator, max_new_tokens=3)
    chat, completion = llm.chat(QUESTION), llm.complete("hi")
    [chat_end] = [e for e in events if isinstance(e, LLMChatEndEvent)]
    [completion_end] = [e for e in events if isinstance(e, LLMCompletionEndEvent)]
    assert chat_end.response.additional_kwargs == chat.additional_kwargs
    assert completion_end.response.raw["usage"] == completion.raw["usage"]


def test_per_call_max_tokens_is_honoured_exactly(scripted_generator):
    llm = TaleHFLLM.from_generator(scripted_generator(" 7"), max_new_tokens=4)
    response = llm.chat(QUESTION, max_tokens=5)
    assert response.message.content == " 7" * 5
    assert response.raw["usage"]["completion_tokens"] == 5
    assert response.raw["finish_reason"] == "length"
    assert llm.complete("x", max_new_tokens=2).raw["usage"]["completion_tokens"] == 2  # the HF spelling
    assert llm.complete("x").raw["usage"]["completion_tokens"] == 4  # the LLM's default
    with pytest.raises(ValueError, match="disagree"):
        llm.chat(QUESTION, max_tokens=3, max_new_tokens=4)


def test_stop_cuts_the_text(scripted_generator):
    llm = TaleHFLLM.from_generator(scripted_generator(" 7"), max_new_tokens=20)
    response = llm.chat(QUESTION, stop="7 7 7")  # a single string is accepted as one stop string
    assert response.message.content == " "
    assert response.raw["finish_reason"] == "stop"
    assert response.raw["usage"]["completion_tokens"] == 3
    assert llm.complete("x", stop=["7 7"]).text == " "


def test_per_call_temperature_reaches_the_backend(tiny_generator, monkeypatch):
    llm = TaleHFLLM.from_generator(tiny_generator, max_new_tokens=2)
    spy = Spy(monkeypatch, tiny_generator, "generate")
    llm.chat(QUESTION)
    llm.chat(QUESTION, temperature=0.7)
    assert [kw["temperature"] for _, kw in spy.calls] == [0.0, 0.7]


def test_budget_needs_enforcement_and_reaches_the_backend(scripted_generator, monkeypatch):
    plain = TaleHFLLM.from_generator(scripted_generator(" 7"), max_new_tokens=3)
    with pytest.raises(ValueError, match="enforce_budget"):
        plain.chat(QUESTION, budget=10)
    gen = scripted_generator(" 7", enforce_budget=True)
    llm = TaleHFLLM.from_generator(gen, max_new_tokens=30, budget=12)  # the cap must exceed the answer reserve
    assert llm.enforce_budget
    spy = Spy(monkeypatch, gen, "generate")
    llm.chat(QUESTION)
    llm.batch_complete(["a", "b"], budget=5)
    assert [kw["budgets"] for _, kw in spy.calls] == [[12], [5, 5]]


def test_unknown_kwargs_are_ignored_with_one_warning(tiny_generator, caplog):
    llm = TaleHFLLM.from_generator(tiny_generator, max_new_tokens=2)
    with caplog.at_level(logging.WARNING, logger="tale_integrations.llama_index.llms"):
        llm.chat(QUESTION, extra_headers={"x": "y"})  # DocumentContextExtractor passes this
        llm.chat(QUESTION, extra_headers={"x": "y"})
        llm.complete("hi", formatted=True)  # LlamaIndex's own flag: silent
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "'extra_headers'" in warnings[0]


# -- streaming -------------------------------------------------------------------------------------


def check_stream(responses, text_of, full_text, usage):
    deltas = [r.delta for r in responses]
    assert "".join(deltas) == full_text
    assert [text_of(r) for r in responses] == ["".join(deltas[: i + 1]) for i in range(len(deltas))]
    assert all(r.raw is None for r in responses[:-1])
    assert responses[-1].raw["usage"] == usage == responses[-1].additional_kwargs


def test_stream_chat_deltas_join_to_the_text_and_end_with_usage(tiny_generator):
    llm = TaleHFLLM.from_generator(tiny_generator, max_new_tokens=8)
    full = llm.chat(QUESTION)
    responses = list(llm.stream_chat(QUESTION))
    assert len(responses) > 1
    check_stream(responses, lambda r: r.message.content, full.message.content, full.raw["usage"])


def test_stream_complete_honours_max_tokens(scripted_generator):
    llm = TaleHFLLM.from_generator(scripted_generator(" 7"))
    responses = list(llm.stream_complete("count", max_tokens=4))
    usage = usage_of(llm.generator, [{"role": "user", "content": "count"}], 4)
    check_stream(responses, lambda r: r.text, " 7" * 4, usage)


def test_llm_stream_and_predict_use_the_chat_path(scripted_generator):
    from llama_index.core.prompts import PromptTemplate

    llm = TaleHFLLM.from_generator(scripted_generator(" 7"), max_new_tokens=3)
    prompt = PromptTemplate("Say {word}")
    assert llm.predict(prompt, word="seven") == " 7" * 3
    assert "".join(llm.stream(prompt, word="seven")) == " 7" * 3


# -- async -----------------------------------------------------------------------------------------


async def test_achat_and_acomplete_match_sync(tiny_generator):
    llm = TaleHFLLM.from_generator(tiny_generator, max_new_tokens=6)
    chat, achat = llm.chat(QUESTION), await llm.achat(QUESTION)
    assert (achat.message.content, achat.raw) == (chat.message.content, chat.raw)
    complete, acomplete = llm.complete("hi", max_tokens=3), await llm.acomplete("hi", max_tokens=3)
    assert (acomplete.text, acomplete.additional_kwargs) == (complete.text, complete.additional_kwargs)


async def test_astream_chat_and_astream_complete(tiny_generator):
    handler = TokenCountingHandler()
    llm = TaleHFLLM.from_generator(tiny_generator, max_new_tokens=6, callback_manager=CallbackManager([handler]))
    full = llm.chat(QUESTION)
    responses = [r async for r in await llm.astream_chat(QUESTION)]
    check_stream(responses, lambda r: r.message.content, full.message.content, full.raw["usage"])
    completion = llm.complete("hi")
    pieces = [r async for r in await llm.astream_complete("hi")]
    check_stream(pieces, lambda r: r.text, completion.text, completion.raw["usage"])
    assert handler.completion_llm_token_count == 2 * (full.raw["usage"]["completion_tokens"]
                                                      + completion.raw["usage"]["completion_tokens"])


# -- batches ---------------------------------------------------------------------------------------

CONVERSATIONS = [
    [ChatMessage(role=MessageRole.USER, content="hi")],
    QUESTION,
    [ChatMessage(role=MessageRole.USER, content="a much longer question that needs left padding in the batch")],
]


def test_batch_chat_is_one_backend_call_in_order(tiny_generator, monkeypatch):
    handler = TokenCountingHandler()
    llm = TaleHFLLM.from_generator(tiny_generator, max_new_tokens=5, callback_manager=CallbackManager([handler]))
    single = [llm.chat(c) for c in CONVERSATIONS]
    handler.reset_counts()
    spy = Spy(monkeypatch, tiny_generator, "generate")
    batched = llm.batch_chat(CONVERSATIONS)
    assert len(spy.calls) == 1 and len(spy.calls[0][0]) == 3
    assert [r.message.content for r in batched] == [r.message.content for r in single]
    assert [r.raw["usage"] for r in batched] == [r.raw["usage"] for r in single]
    assert [e.prompt_token_count for e in handler.llm_token_counts] == [r.raw["usage"]["prompt_tokens"] for r in single]
    assert llm.batch_chat([]) == []


def test_batch_complete_is_one_backend_call_in_order(scripted_generator, monkeypatch, events):
    gen = scripted_generator(" 7")
    llm = TaleHFLLM.from_generator(gen, max_new_tokens=2)
    spy = Spy(monkeypatch, gen, "generate")
    out = llm.batch_complete(["short", "a longer prompt here", "x"], max_tokens=3, stop=["7 7 7"])
    assert len(spy.calls) == 1
    assert [r.text for r in out] == [" "] * 3
    prompts = [[{"role": "user", "content": p}] for p in ("short", "a longer prompt here", "x")]
    assert [r.raw["usage"] for r in out] == [usage_of(gen, p, 3) for p in prompts]
    assert len([e for e in events if isinstance(e, LLMCompletionEndEvent)]) == 3


async def test_async_batches_are_one_backend_call(tiny_generator, monkeypatch):
    llm = TaleHFLLM.from_generator(tiny_generator, max_new_tokens=4)
    single = [llm.chat(c) for c in CONVERSATIONS]
    spy = Spy(monkeypatch, tiny_generator, "agenerate")
    batched = await llm.abatch_chat(CONVERSATIONS)
    completions = await llm.abatch_complete(["hi", "Q: 2+2?"])
    assert len(spy.calls) == 2
    assert [r.message.content for r in batched] == [r.message.content for r in single]
    assert [r.text for r in completions] == [llm.complete(p).text for p in ("hi", "Q: 2+2?")]


# -- message conversion ----------------------------------------------------------------------------


def test_message_conversion():
    messages = [
        ChatMessage(role=MessageRole.DEVELOPER, content="Be terse."),
        ChatMessage(role=MessageRole.USER, blocks=[TextBlock(text="part one"), TextBlock(text="part two")]),
        ChatMessage(role=MessageRole.ASSISTANT, content="calling the calculator"),
        ChatMessage(role=MessageRole.TOOL, content="42"),
        ChatMessage(role=MessageRole.FUNCTION, content="43"),
    ]
    assert to_backend_messages(messages) == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "part one\npart two"},
        {"role": "assistant", "content": "calling the calculator"},
        {"role": "user", "content": TOOL_RESULT_PREFIX + "42"},
        {"role": "user", "content": TOOL_RESULT_PREFIX + "43"},
    ]


def test_agent_style_conversation_ending_in_a_tool_result(tiny_generator, monkeypatch):
    llm = TaleHFLLM.from_generator(tiny_generator, max_new_tokens=3)
    spy = Spy(monkeypatch, tiny_generator, "generate")
    llm.chat([*QUESTION, ChatMessage(role=MessageRole.TOOL, content="5")])
    assert spy.calls[0][0][0][-1] == {"role": "user", "content": "Tool result: 5"}


def test_bad_messages_are_clear_errors(tiny_generator):
    llm = TaleHFLLM.from_generator(tiny_generator)
    image = ChatMessage(role=MessageRole.USER, blocks=[TextBlock(text="look"), ImageBlock(image=b"\x89PNG")])
    with pytest.raises(ValueError, match="'image' block.*text only"):
        llm.chat([image])
    with pytest.raises(ValueError, match="empty"):
        llm.chat([])
    with pytest.raises(TypeError, match="list of ChatMessage"):
        to_backend_messages("hello")
    with pytest.raises(TypeError, match=r"messages\[0\]"):
        to_backend_messages([{"role": "user", "content": "hi"}])


# -- end to end ------------------------------------------------------------------------------------


def test_vector_store_query_engine_end_to_end(wide_scripted, monkeypatch):
    nodes = [TextNode(text=t) for t in ("Paris is the capital of France.", "Berlin is in Germany.", "Cats purr.")]
    index = VectorStoreIndex(nodes, embed_model=MockEmbedding(embed_dim=8))
    handler = TokenCountingHandler()
    llm = TaleHFLLM.from_generator(wide_scripted, max_new_tokens=6)
    spy = Spy(monkeypatch, wide_scripted, "generate")
    # The synthesizer installs Settings.callback_manager on the LLM, replacing the LLM's own.
    monkeypatch.setattr(Settings, "callback_manager", CallbackManager([handler]))
    engine = index.as_query_engine(llm=llm, similarity_top_k=2)
    response = engine.query("What is the capital of France?")
    [(prompts, _)] = spy.calls
    [conversation] = prompts
    assert conversation[0]["role"] == "system" and conversation[-1]["role"] == "user"  # the chat QA template
    assert "What is the capital of France?" in conversation[-1]["content"]
    assert sum(n.node.get_content() in conversation[-1]["content"] for n in response.source_nodes) == 2
    assert response.response == " 7" * 6
    assert handler.prompt_llm_token_count == len(wide_scripted.encode_chat(conversation))
    assert handler.completion_llm_token_count == 6


async def test_async_query_engine(wide_scripted):
    index = VectorStoreIndex([TextNode(text="Seven is a number.")], embed_model=MockEmbedding(embed_dim=8))
    llm = TaleHFLLM.from_generator(wide_scripted, max_new_tokens=2)
    response = await index.as_query_engine(llm=llm).aquery("What is seven?")
    assert response.response == " 7 7"


# -- the embedded model ----------------------------------------------------------------------------


@pytest.mark.slow
def test_embedded_model_chat_stream_and_exact_usage(embedded_generator):
    handler = TokenCountingHandler()
    llm = TaleHFLLM.from_generator(embedded_generator, max_new_tokens=24, callback_manager=CallbackManager([handler]))
    messages = [ChatMessage(role=MessageRole.USER, content="What is 12 plus 30? Reply with the number only.")]
    response = llm.chat(messages)
    [expected] = embedded_generator.generate([[{"role": "user", "content": messages[0].content}]], max_tokens=24)
    assert response.message.content == expected.text and expected.text.strip()
    assert "12 plus 30" not in response.message.content
    as_dicts = [{"role": "user", "content": messages[0].content}]
    usage = usage_of(embedded_generator, as_dicts, expected.usage.output_tokens)
    assert response.raw["usage"] == usage
    pieces = list(llm.stream_chat(messages))
    check_stream(pieces, lambda r: r.message.content, expected.text, usage)
    assert handler.prompt_llm_token_count == 2 * usage["prompt_tokens"]
    assert llm.metadata.context_window == 8192 and llm.metadata.model_name == "SmolLM2-135M-Instruct"
