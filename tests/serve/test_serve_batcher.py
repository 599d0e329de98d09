"""`MicroBatcher` on its own (a fake generator), and micro-batching, cancellation and shutdown through
the running server (``scheduler="microbatch"``; the continuous scheduler's tests are in
test_serve_continuous.py)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import httpx
import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("torch")

from tale_integrations.core.generation import Generation, Usage  # noqa: E402
from tale_integrations.serve.batcher import (  # noqa: E402
    BatchedGenerator,
    BatcherClosed,
    JobCancelled,
    MicroBatcher,
    QueueFull,
)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


class FakeGenerator:
    """Echoes the last message; records every call; optionally slow or failing on one text."""

    model_name = "fake"
    temperature = 0.0

    def __init__(self, *, delay: float = 0.0, fail_on: str | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.delay = delay
        self.fail_on = fail_on

    def generate(self, prompts, **kwargs):
        self.calls.append({"texts": [p[-1]["content"] for p in prompts], **kwargs})
        time.sleep(self.delay)
        if self.fail_on is not None and any(p[-1]["content"] == self.fail_on for p in prompts):
            raise ValueError(f"cannot answer {self.fail_on!r}")
        caps = kwargs["max_tokens"]
        caps = caps if isinstance(caps, list) else [caps] * len(prompts)
        return [Generation(text=p[-1]["content"].upper(), usage=Usage(input_tokens=1, output_tokens=cap or 0),
                           finish_reason="stop", model="fake")
                for p, cap in zip(prompts, caps, strict=True)]


async def started(generator: Any, **kwargs: Any) -> MicroBatcher:
    batcher = MicroBatcher(generator, **kwargs)
    await batcher.start()
    return batcher


async def test_concurrent_requests_share_one_call_with_per_row_settings():
    gen = FakeGenerator()
    batcher = await started(gen, max_batch_size=8, window_ms=50)
    results = await asyncio.gather(*(batcher.submit(user(f"q{i}"), max_tokens=i + 1, budget=i or None)
                                     for i in range(5)))
    await batcher.close()
    assert [r.text for r in results] == [f"Q{i}" for i in range(5)]
    assert [r.usage.output_tokens for r in results] == [1, 2, 3, 4, 5]
    [call] = gen.calls
    assert call["max_tokens"] == [1, 2, 3, 4, 5]
    assert call["budgets"] == [None, 1, 2, 3, 4]
    assert len(call["cancel"]) == 5 and call["answer_format"] == "chat"
    assert batcher.batch_sizes == {5: 1}


async def test_groups_by_temperature_and_stop():
    gen = FakeGenerator()
    batcher = await started(gen, max_batch_size=8, window_ms=50)
    await asyncio.gather(batcher.submit(user("a")), batcher.submit(user("b"), temperature=0.5),
                         batcher.submit(user("c"), temperature=0.0), batcher.submit(user("d"), stop=["x"]))
    await batcher.close()
    calls = {tuple(c["texts"]): (c["temperature"], c["stop"]) for c in gen.calls}
    assert calls == {("a", "c"): (0.0, None), ("b",): (0.5, None), ("d",): (0.0, ["x"])}


async def test_batches_never_exceed_max_batch_size():
    gen = FakeGenerator(delay=0.01)
    batcher = await started(gen, max_batch_size=3, window_ms=20)
    results = await asyncio.gather(*(batcher.submit(user(str(i))) for i in range(10)))
    await batcher.close()
    assert [r.text for r in results] == [str(i) for i in range(10)]
    assert sorted(len(c["texts"]) for c in gen.calls) == [1, 3, 3, 3]


async def test_one_bad_row_fails_alone():
    gen = FakeGenerator(fail_on="bad")
    batcher = await started(gen, window_ms=50)
    results = await asyncio.gather(batcher.submit(user("good")), batcher.submit(user("bad")),
                                   batcher.submit(user("fine")), return_exceptions=True)
    await batcher.close()
    assert results[0].text == "GOOD" and results[2].text == "FINE"
    assert isinstance(results[1], ValueError)


async def test_a_request_cancelled_while_waiting_is_dropped():
    gen = FakeGenerator(delay=0.2)
    batcher = await started(gen, max_batch_size=1, window_ms=0)
    first = asyncio.ensure_future(batcher.submit(user("first")))
    await asyncio.sleep(0.05)  # the first is generating; the second waits
    cancel = threading.Event()
    second = asyncio.ensure_future(batcher.submit(user("second"), cancel=cancel))
    await asyncio.sleep(0.01)
    cancel.set()
    assert (await first).text == "FIRST"
    with pytest.raises(JobCancelled):
        await second
    await batcher.close()
    assert [c["texts"] for c in gen.calls] == [["first"]]


async def test_close_finishes_waiting_requests_then_refuses_new_ones():
    gen = FakeGenerator(delay=0.05)
    batcher = await started(gen, max_batch_size=2, window_ms=5)
    pending = [asyncio.ensure_future(batcher.submit(user(f"q{i}"))) for i in range(6)]
    await asyncio.sleep(0)
    await batcher.close()
    assert [p.result().text for p in pending] == [f"Q{i}" for i in range(6)]
    with pytest.raises(BatcherClosed):
        await batcher.submit(user("late"))


async def test_batched_generator_is_a_generator_over_the_batcher():
    gen = FakeGenerator()
    batcher = await started(gen, window_ms=50)
    view = BatchedGenerator(batcher)
    out = await view.agenerate([user("a"), user("b")], max_tokens=3)
    assert [g.text for g in out] == ["A", "B"]
    assert len(gen.calls) == 1 and gen.calls[0]["max_tokens"] == [3, 3]
    assert [g.text for g in view.generate([user("c")], max_tokens=1)] == ["C"]
    await batcher.close()


async def test_batched_generator_checks_calls_before_they_queue():
    gen = FakeGenerator()
    batcher = await started(gen, window_ms=50)
    view = BatchedGenerator(batcher)
    with pytest.raises(ValueError, match="max_tokens"):
        await view.agenerate([user("a")], max_tokens=0)
    with pytest.raises(TypeError, match="stop"):
        view.generate([user("a")], stop="x")
    with pytest.raises(ValueError, match="role"):
        await view.agenerate([[{"role": "robot", "content": "a"}]])
    assert await view.agenerate([]) == [] and gen.calls == [] and not batcher.batch_sizes
    await batcher.close()


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="max_batch_size"):
        MicroBatcher(FakeGenerator(), max_batch_size=0)
    with pytest.raises(ValueError, match="window_ms"):
        MicroBatcher(FakeGenerator(), window_ms=-1)


# -- through the server ---------------------------------------------------------------------------

def spy_batches(generator: Any) -> list[int]:
    sizes: list[int] = []
    original = generator.generate

    def recording(prompts, **kwargs):
        sizes.append(len(prompts))
        return original(prompts, **kwargs)

    generator.generate = recording
    return sizes


async def test_concurrent_openai_requests_are_micro_batched(serve, seven):
    sizes = spy_batches(seven)
    url = serve(seven, scheduler="microbatch", max_batch_size=16, batch_window_ms=50)
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    results = await asyncio.gather(*(
        client.chat.completions.create(model="seven", messages=user(f"question {i}"), max_tokens=3 + i % 3)
        for i in range(8)))
    await client.close()
    assert [r.choices[0].message.content for r in results] == [" 7" * (3 + i % 3) for i in range(8)]
    assert [r.usage.completion_tokens for r in results] == [3 + i % 3 for i in range(8)]
    assert sum(sizes) == 8
    assert max(sizes) > 1, sizes


async def test_max_batch_size_one_answers_one_at_a_time(serve, seven):
    sizes = spy_batches(seven)
    url = serve(seven, scheduler="microbatch", max_batch_size=1, batch_window_ms=50)
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    await asyncio.gather(*(client.chat.completions.create(model="seven", messages=user("q"), max_tokens=2)
                           for _ in range(4)))
    await client.close()
    assert sizes == [1, 1, 1, 1]


def test_a_client_that_disconnects_cancels_its_row(serve, seven):
    events: list[threading.Event] = []
    original = seven.generate

    def waits_for_cancel(prompts, **kwargs):
        events.extend(kwargs["cancel"])
        for event in kwargs["cancel"]:
            event.wait(10)
        return original(prompts, **kwargs)

    seven.generate = waits_for_cancel
    url = serve(seven, scheduler="microbatch")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/v1/chat/completions", json={"model": "seven", "messages": user("hi"), "max_tokens": 50},
                   timeout=httpx.Timeout(30, read=0.5))
    deadline = time.monotonic() + 5
    while not (events and events[0].is_set()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert events and events[0].is_set()


def test_closing_a_stream_stops_its_generation(serve, seven):
    record: dict[str, Any] = {"events": 0, "finished": False, "closed": threading.Event()}
    original = seven.stream

    def slow_stream(messages, **kwargs):
        try:
            for event in original(messages, **kwargs):
                record["events"] += 1
                time.sleep(0.02)
                yield event
            record["finished"] = True
        finally:
            record["closed"].set()

    seven.stream = slow_stream
    url = serve(seven, scheduler="microbatch")
    body = {"model": "seven", "messages": user("hi"), "max_tokens": 200, "stream": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        next(lines)
    assert record["closed"].wait(5)
    assert not record["finished"] and record["events"] < 100


def test_shutdown_finishes_requests_in_flight(serve, seven):
    sizes = spy_batches(seven)
    original = seven.generate
    started = threading.Event()

    def slow(prompts, **kwargs):
        started.set()
        time.sleep(0.5)
        return original(prompts, **kwargs)

    seven.generate = slow
    url = serve(seven, scheduler="microbatch", batch_window_ms=50)
    answers: list[Any] = []

    def ask() -> None:
        r = httpx.post(f"{url}/v1/chat/completions", json={"model": "seven", "messages": user("hi"), "max_tokens": 3},
                       timeout=30)
        answers.append(r)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    assert started.wait(10)
    serve.last.stop()
    for t in threads:
        t.join(30)
    assert len(answers) == 4
    assert all(r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == " 7" * 3 for r in answers)
    assert sum(sizes) == 4


async def test_a_long_prompt_never_cuts_a_neighbours_cap(seven):
    # The tiny model's window is 256 tokens: a short prompt asking for 200 tokens cannot share a
    # left-padded batch with a ~150-token prompt (the backend would lower every cap to 256 - 150).
    sizes = spy_batches(seven)
    batcher = await started(seven, window_ms=50)
    long_prompt = user("step by step " * 45)
    assert 100 < len(seven.encode_chat(long_prompt)) < 200
    short, long, other = await asyncio.gather(
        batcher.submit(user("hi"), max_tokens=200), batcher.submit(long_prompt, max_tokens=10),
        batcher.submit(user("hello"), max_tokens=5))
    await batcher.close()
    assert short.usage.output_tokens == 200 and short.text == " 7" * 200
    assert long.usage.output_tokens == 10 and other.usage.output_tokens == 5
    assert sorted(sizes) == [1, 2]  # "hi" and "hello" together, the long prompt alone


async def test_a_full_queue_refuses_with_queue_full():
    gen = FakeGenerator(delay=0.2)
    batcher = await started(gen, max_batch_size=1, window_ms=0, max_queue=2)
    first = asyncio.ensure_future(batcher.submit(user("first")))
    while not gen.calls:  # the first is generating; the queue is empty again
        await asyncio.sleep(0.005)
    waiting = [asyncio.ensure_future(batcher.submit(user(f"w{i}"))) for i in range(2)]
    await asyncio.sleep(0)
    assert batcher.waiting == 2
    with pytest.raises(QueueFull, match="2 requests are waiting"):
        await batcher.submit(user("one too many"))
    assert [r.text for r in await asyncio.gather(first, *waiting)] == ["FIRST", "W0", "W1"]
    await batcher.close()


async def test_close_with_a_timeout_fails_what_is_still_waiting():
    gen = FakeGenerator(delay=0.3)
    batcher = await started(gen, max_batch_size=1, window_ms=0)
    pending = [asyncio.ensure_future(batcher.submit(user(f"q{i}"))) for i in range(3)]
    while not gen.calls:
        await asyncio.sleep(0.005)
    await batcher.close(timeout=0.05)
    outcomes = await asyncio.gather(*pending, return_exceptions=True)
    assert outcomes[0].text == "Q0"  # the batch in flight finished
    assert all(isinstance(o, BatcherClosed) for o in outcomes[1:])
