"""Token-by-token streaming: order, joining, stop strings held back, cancellation, errors."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("torch")

from tale_integrations.backends.hf.streaming import safe_prefix  # noqa: E402

PROMPT = [{"role": "user", "content": "count"}]


def test_stream_yields_each_token_and_joins_to_the_final_text(scripted_generator):
    gen = scripted_generator(" 7")
    events = list(gen.stream(PROMPT, max_tokens=5))
    assert [e.text for e in events[:-1]] == [" 7"] * 5
    final = events[-1].final
    assert final is not None and all(e.final is None for e in events[:-1])
    assert "".join(e.text for e in events) == final.text == " 7" * 5
    assert final.usage.output_tokens == 5 and final.finish_reason == "length"
    assert final == gen.generate([PROMPT], max_tokens=5)[0]


def test_stream_matches_generate_on_a_random_model(tiny_generator):
    prompt = [{"role": "user", "content": "Tell me something."}]
    events = list(tiny_generator.stream(prompt, max_tokens=12))
    expected = tiny_generator.generate([prompt], max_tokens=12)[0]
    assert "".join(e.text for e in events) == expected.text
    assert events[-1].final == expected


def test_stream_never_shows_a_stop_string(scripted_generator):
    gen = scripted_generator(" 7")
    events = list(gen.stream(PROMPT, max_tokens=20, stop=["7 7 7"]))
    shown = "".join(e.text for e in events)
    assert shown == events[-1].final.text == " "
    assert events[-1].final.usage.output_tokens == 3
    assert events[-1].final.finish_reason == "stop"


def test_closing_the_stream_early_stops_generation(scripted_generator):
    gen = scripted_generator(" 7")
    events = gen.stream(PROMPT, max_tokens=200)
    assert next(events).text == " 7"
    start = time.perf_counter()
    events.close()
    # the generation thread was told to stop and has released the model
    assert gen._generate_lock.acquire(timeout=5)
    gen._generate_lock.release()
    assert time.perf_counter() - start < 5
    assert gen.generate([PROMPT], max_tokens=2)[0].usage.output_tokens == 2


def test_bad_stream_arguments_raise_at_the_call(tiny_generator):
    with pytest.raises(ValueError, match="max_tokens"):
        tiny_generator.stream(PROMPT, max_tokens=0)


async def test_astream_matches_stream(scripted_generator):
    gen = scripted_generator(" 7")
    events = [e async for e in gen.astream(PROMPT, max_tokens=4)]
    assert [e.text for e in events[:-1]] == [" 7"] * 4
    assert events[-1].final.usage.output_tokens == 4


async def test_astream_can_stop_early(scripted_generator):
    gen = scripted_generator(" 7")
    stream = gen.astream(PROMPT, max_tokens=200)
    async for event in stream:
        assert event.text == " 7"
        break
    await stream.aclose()
    assert gen.generate([PROMPT], max_tokens=1)[0].usage.output_tokens == 1


@pytest.mark.parametrize(("text", "stop", "shown"), [
    ("hello", None, "hello"),
    ("hello wor", ["world"], "hello "),
    ("hello world and more", ["world"], "hello "),
    ("abc\ufffd", None, "abc"),
    ("the end.", ["\n\n", "END"], "the end."),
    ("line\n", ["\n\n"], "line"),
])
def test_safe_prefix(text, stop, shown):
    assert safe_prefix(text, stop) == shown


async def test_cancelling_an_astream_task_stops_generation(scripted_generator):
    import asyncio

    gen = scripted_generator(" 7")
    seen = []

    async def consume():
        async for event in gen.astream(PROMPT, max_tokens=500):
            seen.append(event.text)

    task = asyncio.create_task(consume())
    while not seen:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert gen._generate_lock.acquire(timeout=5)
    gen._generate_lock.release()
    assert len(seen) < 500
