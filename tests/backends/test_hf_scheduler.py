"""`StepScheduler`: continuous batching gives what ``HFGenerator.generate`` gives, row by row, while rows
join, leave, are cancelled or refused. Tiny real models (tests/tiny_models.py); the scheduler's own
counters and state are the evidence, never a sleep."""

from __future__ import annotations

import threading
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from tale_integrations.backends.hf import scheduler as scheduler_module  # noqa: E402
from tale_integrations.backends.hf.scheduler import StepScheduler  # noqa: E402
from tale_integrations.backends.row_rules import force_token  # noqa: E402
from tale_integrations.core.errors import BatcherClosed, JobCancelled, QueueFull  # noqa: E402

WAIT = 60  # seconds any single wait may take before the test fails (never reached when it passes)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


PROMPTS = [user("What is 2 + 3? " * k + "Answer step by step.") for k in (1, 5, 2, 9, 3, 1, 7, 4)]


@pytest.fixture()
def started():
    """A factory: ``started(generator, **kwargs)`` is a running `StepScheduler`, closed after the test."""
    schedulers: list[StepScheduler] = []

    def start(generator: Any, **kwargs: Any) -> StepScheduler:
        schedulers.append(StepScheduler(generator, **kwargs).start())
        return schedulers[-1]

    yield start
    for s in schedulers:
        s.close(timeout=WAIT)


class Progress:
    """A listener that lets a test wait until a row has produced ``n`` tokens."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self._changed = threading.Condition()

    def __call__(self, ids: list[int]) -> None:
        with self._changed:
            self.tokens.extend(ids)
            self._changed.notify_all()

    def wait_for(self, n: int) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.tokens) >= n, WAIT), "the row made no progress"


def same(a, b) -> bool:
    return (a.text, a.usage.input_tokens, a.usage.output_tokens, a.finish_reason) == (
        b.text, b.usage.input_tokens, b.usage.output_tokens, b.finish_reason)


def test_greedy_rows_equal_generate_while_rows_join_and_leave(tiny_generator, started):
    caps = [40, 3, 30, 40, 1, 25, 40, 12]
    direct = [tiny_generator.generate([p], max_tokens=cap)[0] for p, cap in zip(PROMPTS, caps, strict=True)]
    # Three rows at once and 8-token prefill chunks: every prompt is spread over several turns, rows
    # join a running batch and leave it at different steps.
    s = started(tiny_generator, max_rows=3, prefill_tokens=8)
    rows = [s.submit(p, max_tokens=cap) for p, cap in zip(PROMPTS, caps, strict=True)]
    results = [r.result(WAIT) for r in rows]
    assert all(same(d, r) for d, r in zip(direct, results, strict=True)), [(d.text, r.text) for d, r in
                                                                           zip(direct, results, strict=True)]
    stats = s.stats()
    assert stats["finished"] == 8 and stats["decoding"] == 0 and stats["waiting"] == 0
    assert max(stats["batch_sizes"]) == 3  # rows really shared steps
    # The prompts share their first tokens: after the first, each took them from the last one's cache.
    def shared(a: list[int], b: list[int]) -> int:
        n = next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        return min(n, len(a) - 1, len(b) - 1)

    reused = [shared(a.prompt, b.prompt) for a, b in zip(rows, rows[1:], strict=False)]
    assert all(n >= 8 for n in reused)
    assert stats["reused_prefix_tokens"] == sum(reused)
    assert stats["prefilled_tokens"] == sum(len(r.prompt) - 1 for r in rows) - sum(reused)


def test_short_prompts_are_prefilled_together(tiny_generator, started):
    direct = [tiny_generator.generate([p], max_tokens=12)[0] for p in PROMPTS]
    s = started(tiny_generator, max_rows=8, prefill_tokens=512)
    with tiny_generator._decoder.lock:  # the loop waits on the model while every request arrives
        rows = [s.submit(p, max_tokens=12) for p in PROMPTS]
    assert all(same(d, r.result(WAIT)) for d, r in zip(direct, rows, strict=True))
    stats = s.stats()
    assert stats["prefill_passes"] <= 2  # the first prompt perhaps alone, the other seven in one group
    assert stats["prefilled_tokens"] + stats["reused_prefix_tokens"] == sum(len(r.prompt) - 1 for r in rows)
    assert stats["reused_prefix_tokens"] >= 6 * 8  # the prefix the group shares was computed once


def test_relayouts_keep_the_results(tiny_generator, started, monkeypatch):
    # Little headroom: the buffer runs out of columns and is laid out again many times; a long prompt
    # joining a batch of short ones needs more columns before the current one.
    monkeypatch.setattr(scheduler_module, "MIN_HEADROOM", 2)
    prompts = [user("hi"), user("What is 2 + 3? " * 12), user("ok"), user("step by step " * 20)]
    direct = [tiny_generator.generate([p], max_tokens=30)[0] for p in prompts]
    s = started(tiny_generator, max_rows=4, prefill_tokens=512)
    first = s.submit(prompts[0], max_tokens=30)
    rows = [first, *(s.submit(p, max_tokens=30) for p in prompts[1:])]
    assert all(same(d, r.result(WAIT)) for d, r in zip(direct, rows, strict=True))


def test_per_row_caps_stops_and_temperature_share_one_batch(seven, started):
    settings = [dict(max_tokens=3), dict(max_tokens=12, stop=["7 7 7"]), dict(max_tokens=7), dict(max_tokens=5)]
    direct = [seven.generate([user("count")], **kw)[0] for kw in settings]
    s = started(seven, max_rows=4)
    rows = [s.submit(user("count"), **kw) for kw in settings]
    results = [r.result(WAIT) for r in rows]
    assert all(same(d, r) for d, r in zip(direct, results, strict=True))
    assert [r.finish_reason for r in results] == ["length", "stop", "length", "length"]
    assert results[1].text == direct[1].text and "7 7 7" not in results[1].text
    # The scripted model's one token is certain even when sampled: a sampled row keeps its own temperature.
    assert s.submit(user("count"), max_tokens=4, temperature=0.2).result(WAIT).text == " 7" * 4


def test_budgets_and_answer_rules_apply_to_their_row_only(scripted_generator, tiny_tokenizer, started):
    gen = scripted_generator(" 7", model_name="seven", enforce_budget=True)
    [direct] = gen.generate([user("q")], max_tokens=40, budgets=[5], answer_format="chat")
    eos = tiny_tokenizer.eos_token_id

    class EndAtThree:
        def apply(self, generated, scores):
            if len(generated) == 3:
                force_token(scores, eos)

    s = started(gen, max_rows=3)
    budgeted = s.submit(user("q"), max_tokens=40, budget=5)
    ruled = s.submit(user("q"), max_tokens=40, answer_rules=[EndAtThree()])
    free = s.submit(user("q"), max_tokens=9)
    assert same(direct, budgeted.result(WAIT)) and direct.text.startswith(" 7" * 5 + "\n\nIn short,")
    assert ruled.result(WAIT).usage.output_tokens == 4 and ruled.result().finish_reason == "stop"
    assert free.result(WAIT).text == " 7" * 9


def test_listener_sees_every_token_in_order(seven, started):
    progress = Progress()
    s = started(seven)
    result = s.submit(user("q"), max_tokens=6, listener=progress).result(WAIT)
    assert seven.tokenizer.decode(progress.tokens) == result.text == " 7" * 6


def test_a_cancelled_row_leaves_within_one_step(seven, started):
    s = started(seven, max_rows=2)
    progress = Progress()
    cancel = s.new_cancel()
    long = s.submit(user("long"), max_tokens=200, cancel=cancel, listener=progress)
    other = s.submit(user("other"), max_tokens=200)
    progress.wait_for(3)
    cancel.set()  # from this thread, while the scheduler's thread decodes
    with pytest.raises(JobCancelled):
        long.result(WAIT)
    stats = s.stats()
    assert stats["cancelled"] == 1 and stats["cancel_lags"] and max(stats["cancel_lags"]) <= 1
    assert long.freed_at_step - cancel.set_at_step <= 1
    assert len(long.generated) < 200
    assert other.result(WAIT).text == " 7" * 200  # its neighbour was not disturbed


def test_a_cancelled_waiting_request_is_never_decoded(seven, started):
    s = started(seven, max_rows=1)
    progress = Progress()
    first = s.submit(user("first"), max_tokens=100, listener=progress)
    progress.wait_for(1)
    cancel = threading.Event()
    second = s.submit(user("second"), max_tokens=5, cancel=cancel)
    cancel.set()
    with pytest.raises(JobCancelled):
        second.result(WAIT)
    assert second.generated == [] and first.result(WAIT).usage.output_tokens == 100


def test_a_full_queue_refuses_and_a_slot_frees_again(seven, started):
    s = started(seven, max_rows=1, max_waiting=2)
    progress = Progress()
    running = s.submit(user("a"), max_tokens=150, listener=progress, cancel=s.new_cancel())
    progress.wait_for(1)  # decoding: it no longer counts as waiting
    waiting = [s.submit(user("b"), max_tokens=2), s.submit(user("c"), max_tokens=2)]
    with pytest.raises(QueueFull, match="2 requests are waiting"):
        s.submit(user("d"), max_tokens=2)
    with pytest.raises(QueueFull):
        s.check_room()
    assert s.stats()["refused"] == 2
    running.cancel.set()
    assert [w.result(WAIT).text for w in waiting] == [" 7" * 2] * 2
    assert s.submit(user("e"), max_tokens=2).result(WAIT).text == " 7" * 2


def test_a_failed_forward_fails_its_rows_and_the_loop_goes_on(scripted_generator, started):
    gen = scripted_generator(" 7").load()
    forward = gen.model.forward
    s = started(gen)
    progress = Progress()
    gen.model.forward = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom"))
    with pytest.raises(RuntimeError, match="boom"):
        s.submit(user("q"), max_tokens=5, listener=progress).result(WAIT)
    gen.model.forward = forward
    assert s.alive and s.submit(user("q"), max_tokens=3).result(WAIT).text == " 7" * 3
    assert s.stats()["failed"] == 1


def test_a_dead_loop_fails_everyone_and_reports_it(seven, started, monkeypatch):
    s = started(seven)

    def broken() -> None:
        raise SystemError("a bug in the loop")

    monkeypatch.setattr(s, "_prefill", broken)
    row = s.submit(user("q"), max_tokens=3)
    with pytest.raises(BatcherClosed, match="internal error"):
        row.result(WAIT)
    s._thread.join(WAIT)
    assert not s.alive and not s.running and isinstance(s.error, SystemError)
    with pytest.raises(BatcherClosed):
        s.submit(user("q"), max_tokens=3)


def test_close_finishes_rows_or_fails_them_after_the_timeout(seven):
    s = StepScheduler(seven, max_rows=1).start()
    short = s.submit(user("a"), max_tokens=3)
    s.close()
    assert short.result(WAIT).text == " 7" * 3
    with pytest.raises(BatcherClosed):
        s.submit(user("late"), max_tokens=3)

    s = StepScheduler(seven, max_rows=1).start()
    progress = Progress()
    long = s.submit(user("a"), max_tokens=250, listener=progress)
    queued = s.submit(user("b"), max_tokens=3)
    progress.wait_for(1)
    s.close(timeout=0)
    for row in (long, queued):
        with pytest.raises(BatcherClosed, match="shut down"):
            row.result(WAIT)
    assert s.alive and not s.running


def test_bad_arguments_raise_at_submit(seven, started):
    s = started(seven)
    with pytest.raises(ValueError, match="max_tokens"):
        s.submit(user("q"), max_tokens=0)
    with pytest.raises(ValueError, match="context window"):
        s.submit(user("step by step " * 200))
    with pytest.raises(ValueError, match="budgets are only enforced"):
        s.submit(user("q"), budget=5)
    assert s.stats()["waiting"] == 0
    with pytest.raises(ValueError, match="max_rows"):
        StepScheduler(seven, max_rows=0)


@pytest.fixture()
def seven(scripted_generator) -> Any:
    return scripted_generator(" 7", model_name="seven")


@pytest.mark.slow
def test_embedded_model_rows_equal_generate(embedded_generator, started):
    prompts = [user("What is 12 + 30?"), user("Name a colour."), user("A train goes 60 km/h for 2 hours. How far?")]
    direct = [embedded_generator.generate([p], max_tokens=16)[0] for p in prompts]
    s = started(embedded_generator, max_rows=3)
    rows = [s.submit(p, max_tokens=16) for p in prompts]
    assert [r.result(WAIT).text for r in rows] == [d.text for d in direct]


def test_a_model_with_sliding_window_layers_is_refused(tiny_tokenizer):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from tale_integrations.backends.hf import HFGenerator

    config = Qwen2Config(vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True, sliding_window=8,
                         layer_types=["sliding_attention", "full_attention"], eos_token_id=tiny_tokenizer.eos_token_id,
                         pad_token_id=tiny_tokenizer.pad_token_id)
    gen = HFGenerator.from_model(Qwen2ForCausalLM(config).eval(), tiny_tokenizer, model_name="sliding")
    with pytest.raises(ValueError, match="--scheduler microbatch"):
        StepScheduler(gen)


def test_thinking_budgets_and_answer_only_stops_equal_generate(started):
    from tiny_models import build_chain_model, build_thinking_tokenizer

    from tale_integrations.backends.hf import HFGenerator
    from tale_integrations.backends.hf.settings import ThinkingEnforcement

    tok = build_thinking_tokenizer()
    script = {"Ċ": "<think>", "<think>": " 7", "</think>": "[[40]]", "[[40]]": tok.eos_token}
    thinker = HFGenerator.from_model(build_chain_model(tok, script, default=" 7"), tok, model_name="thinker",
                                     thinking=ThinkingEnforcement(answer_reserve=8))
    settings = [dict(thinking_budget=1), dict(thinking_budget=3, stop=["7"]), dict(thinking_budget=0),
                dict(thinking_budget=2, stop=["40"])]
    direct = [thinker.generate([user("q")], max_tokens=40, thinking_budgets=[kw.pop("thinking_budget")],
                               **kw)[0] for kw in [dict(s) for s in settings]]
    s = started(thinker, max_rows=4)
    rows = [s.submit(user("q"), max_tokens=40, **kw) for kw in settings]
    results = [r.result(WAIT) for r in rows]
    assert [(r.text, r.reasoning, r.usage.reasoning_tokens, r.finish_reason) for r in results] == [
        (d.text, d.reasoning, d.usage.reasoning_tokens, d.finish_reason) for d in direct]
    assert results[1].reasoning == "7 7 7" and results[1].text == "[[40]]"  # "7" in the thinking did not stop it
    assert results[3].text == "[[" and results[3].finish_reason == "stop"
