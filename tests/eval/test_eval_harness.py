"""tale_integrations.eval.harness: batching, streaming results, resume after a kill, concurrency, progress."""

from __future__ import annotations

import asyncio
import io
import json

import pytest

from tale_integrations.core.generation import Generation, Usage
from tale_integrations.core.records import RunMismatchError
from tale_integrations.core.search import SearchItem, search_to_file
from tale_integrations.eval.datasets import load_dataset
from tale_integrations.eval.harness import Progress, aevaluate, evaluate, result_path
from tale_integrations.eval.methods import OracleBudgets


def read_records(path):
    lines = path.read_text().splitlines()
    header = json.loads(lines[0])["header"]
    return header, [json.loads(line) for line in lines[1:]]


def test_records_are_streamed_one_batched_call_per_chunk(scripted, numeric_file, five_answers, tmp_path):
    model = scripted(five_answers)
    ds = load_dataset(str(numeric_file))
    [result] = evaluate(model.generator, ds, ["vanilla"], tmp_path / "run", batch_size=2, progress="none")
    assert [len(c) for c in model.calls] == [2, 2, 1]
    assert (result.total, result.resumed, result.new) == (5, 0, 5)
    assert result.path == result_path(tmp_path / "run", "five", "vanilla", "gpt-4o-mini")
    assert result.path.name == "five__vanilla__gpt-4o-mini.jsonl"
    header, records = read_records(result.path)
    assert header["kind"] == "tale-eval" and header["method"] == "vanilla" and header["label"] == "Vanilla CoT"
    assert header["model"] == "gpt-4o-mini" and header["max_tokens"] == 512 and header["dataset"] == "five"
    assert [r["id"] for r in records] == [f"five:{i}" for i in range(1, 6)]
    assert [r["correct"] for r in records] == [True, True, False, True, True]
    first = records[0]
    assert (first["gold"], first["answer"], first["output_tokens"], first["input_tokens"], first["counter"]) == (
        "1", "1", 10, 100, "reported")
    assert first["finish_reason"] == "stop" and first["budget"] is None and first["estimator_usage"] is None
    assert first["messages"][-1]["content"].endswith("Let's think step by step:\n")


def test_tale_ep_records_the_estimator_call(scripted, numeric_file, five_answers, tmp_path):
    model = scripted(five_answers, estimate="[[30]]")
    ds = load_dataset(str(numeric_file), limit=2)
    [result] = evaluate(model.generator, ds, ["tale-ep"], tmp_path, batch_size=16, progress="none")
    assert [len(c) for c in model.calls] == [2, 2]  # one estimator batch, one answer batch
    header, records = read_records(result.path)
    assert header["estimator"] == "zero-shot:gpt-4o-mini" and header["policy"]["min_budget"] == 20
    r = records[0]
    assert (r["budget"], r["budget_raw"], r["estimator_reply"]) == (30, 30, "[[30]]")
    assert r["estimator_model"] == "gpt-4o-mini"
    assert r["estimator_usage"]["input_tokens"] == 20 and r["estimator_usage"]["output_tokens"] == 5


def test_a_killed_run_resumes_with_nothing_lost_or_repeated(scripted, numeric_file, five_answers, tmp_path):
    ds = load_dataset(str(numeric_file))
    crashing = scripted(five_answers, fail_on_call=2)
    with pytest.raises(ConnectionError, match="simulated crash"):
        evaluate(crashing.generator, ds, ["vanilla"], tmp_path, batch_size=2, progress="none")
    path = result_path(tmp_path, "five", "vanilla", "gpt-4o-mini")
    assert [r["id"] for r in read_records(path)[1]] == ["five:1", "five:2"]  # the finished chunk is on disk

    again = scripted(five_answers)
    [result] = evaluate(again.generator, ds, ["vanilla"], tmp_path, batch_size=2, progress="none")
    assert again.questions_asked() == ["Q3", "Q4", "Q5"]  # completed ids are not asked again
    assert (result.resumed, result.new) == (2, 3)
    ids = [r["id"] for r in read_records(path)[1]]
    assert sorted(ids) == [f"five:{i}" for i in range(1, 6)] and len(ids) == len(set(ids))

    third = scripted(five_answers)
    [result] = evaluate(third.generator, ds, ["vanilla"], tmp_path, batch_size=2, progress="none")
    assert third.calls == [] and (result.resumed, result.new) == (5, 0)


def test_tale_ep_crash_between_estimate_and_answer_saves_nothing_half_done(scripted, numeric_file, five_answers,
                                                                           tmp_path):
    ds = load_dataset(str(numeric_file), limit=2)
    crashing = scripted(five_answers, fail_on_call=2)  # the estimator call succeeds, the answer call dies
    with pytest.raises(ConnectionError):
        evaluate(crashing.generator, ds, ["tale-ep"], tmp_path, progress="none")
    path = result_path(tmp_path, "five", "tale-ep", "gpt-4o-mini")
    assert read_records(path)[1] == []
    again = scripted(five_answers)
    evaluate(again.generator, ds, ["tale-ep"], tmp_path, progress="none")
    assert len(read_records(path)[1]) == 2


def test_a_line_cut_by_a_kill_is_redone(scripted, numeric_file, five_answers, tmp_path):
    ds = load_dataset(str(numeric_file), limit=3)
    evaluate(scripted(five_answers).generator, ds, ["vanilla"], tmp_path, progress="none")
    path = result_path(tmp_path, "five", "vanilla", "gpt-4o-mini")
    text = path.read_text()
    path.write_text(text[: len(text) - 25])  # the last record was being written when the process died
    again = scripted(five_answers)
    evaluate(again.generator, ds, ["vanilla"], tmp_path, progress="none")
    assert again.questions_asked() == ["Q3"]
    assert [r["id"] for r in read_records(path)[1]] == ["five:1", "five:2", "five:3"]


def test_different_settings_refuse_to_mix_into_a_file(scripted, numeric_file, five_answers, tmp_path):
    ds = load_dataset(str(numeric_file), limit=1)
    evaluate(scripted(five_answers).generator, ds, ["vanilla"], tmp_path, progress="none")
    with pytest.raises(RunMismatchError, match="max_tokens: 512 -> 64"):
        evaluate(scripted(five_answers).generator, ds, ["vanilla"], tmp_path, max_tokens=64, progress="none")


def test_malformed_lines_are_reported_and_the_run_goes_on(scripted, write_jsonl, five_answers, tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"question": "Q1?", "answer": 1}, "{oops", {"question": "Q2?"}])
    ds = load_dataset(str(path))
    warnings = []
    evaluate(scripted(five_answers).generator, ds, ["vanilla"], tmp_path / "run", progress="none", log=warnings.append)
    assert warnings == [
        "warning: bad: skipped 2 malformed line(s) of " + str(path)
        + " (line 2: not valid JSON (Expecting property name enclosed in double quotes at column 2); "
        "line 3: field 'answer' is missing)"
    ]
    manifest = json.loads((tmp_path / "run" / "run.json").read_text())
    assert manifest["datasets"]["bad"]["malformed"] == [
        {"line": 2, "reason": "not valid JSON (Expecting property name enclosed in double quotes at column 2)"},
        {"line": 3, "reason": "field 'answer' is missing"}]
    assert manifest["datasets"]["bad"]["examples"] == 1 and manifest["models"] == ["gpt-4o-mini"]


def test_empty_dataset_and_uncovered_oracle_fail_early(scripted, write_jsonl, numeric_file, five_answers, tmp_path):
    bad = load_dataset(str(write_jsonl(tmp_path / "bad.jsonl", ["{oops"])))
    with pytest.raises(ValueError, match="no valid examples"):
        evaluate(scripted(five_answers).generator, bad, ["vanilla"], tmp_path / "a", progress="none")
    model = scripted({"unrelated": ("[[1]]", 10)})
    search = tmp_path / "search.jsonl"
    search_to_file(model.generator, [SearchItem(id="x:1", question="unrelated", gold="1")], str(search))
    ds = load_dataset(str(numeric_file))
    with pytest.raises(ValueError, match="covers none of the 5 questions"):
        evaluate(model.generator, ds, ["oracle"], tmp_path / "b", oracle=OracleBudgets.from_file(str(search)),
                 progress="none")
    with pytest.raises(ValueError, match="--search-file"):
        evaluate(model.generator, ds, ["oracle"], tmp_path / "c", progress="none")


class SlowAPI:
    """An async 'API' model that records how many requests are in flight at once."""

    model_name = "api-model"

    def __init__(self, fail_on: str | None = None) -> None:
        self.in_flight = self.peak = 0
        self.fail_on = fail_on
        self.asked: list[str] = []

    def generate(self, prompts, **kwargs):  # pragma: no cover - the async path is under test
        raise AssertionError("sync call")

    async def agenerate(self, prompts, **kwargs):
        self.in_flight += len(prompts)
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(0.01)
            out = []
            for p in prompts:
                question = p[-1]["content"].split(":")[1].strip()  # "Q3"
                if question == self.fail_on:
                    raise TimeoutError("request timed out")
                self.asked.append(question)
                out.append(Generation(text=f"[[{question[1]}]]", usage=Usage(input_tokens=50, output_tokens=8),
                                      finish_reason="stop", model=self.model_name))
            return out
        finally:
            self.in_flight -= len(prompts)


def test_aevaluate_bounds_requests_in_flight(numeric_file, tmp_path):
    api = SlowAPI()
    ds = load_dataset(str(numeric_file))
    [result] = asyncio.run(aevaluate(api, ds, ["vanilla"], tmp_path, concurrency=2, progress="none"))
    assert api.peak == 2 and sorted(api.asked) == ["Q1", "Q2", "Q3", "Q4", "Q5"]
    records = read_records(result.path)[1]
    assert sorted(r["id"] for r in records) == [f"five:{i}" for i in range(1, 6)]
    assert all(r["correct"] for r in records)


def test_aevaluate_failure_keeps_finished_work_and_resumes(numeric_file, tmp_path):
    ds = load_dataset(str(numeric_file))
    with pytest.raises(TimeoutError):
        asyncio.run(aevaluate(SlowAPI(fail_on="Q3"), ds, ["vanilla"], tmp_path, concurrency=1, progress="none"))
    path = result_path(tmp_path, "five", "vanilla", "api-model")
    saved = {r["id"] for r in read_records(path)[1]}
    assert saved == {"five:1", "five:2"}
    api = SlowAPI()
    [result] = asyncio.run(aevaluate(api, ds, ["vanilla"], tmp_path, concurrency=3, progress="none"))
    assert sorted(api.asked) == ["Q3", "Q4", "Q5"] and (result.resumed, result.new) == (2, 3)
    assert len(read_records(path)[1]) == 5
    with pytest.raises(ValueError, match="concurrency"):
        asyncio.run(aevaluate(api, ds, ["vanilla"], tmp_path, concurrency=0))


def test_plain_progress_line_shows_eta_accuracy_and_tokens():
    stream = io.StringIO()
    done = [{"correct": True, "output_tokens": 10}]
    bar = Progress(4, done=done, desc="five vanilla", backend="plain", stream=stream, min_interval=0)
    assert bar.line() == "five vanilla 1/4 acc 100.0% tok 10.0 ETA -"
    bar.update([{"correct": False, "output_tokens": 20}])
    line = stream.getvalue().strip()
    assert line.startswith("five vanilla 2/4 acc 50.0% tok 15.0 ETA 0m")
    bar.close()
    silent = io.StringIO()
    Progress(2, backend="none", stream=silent).update([{"correct": True, "output_tokens": 1}])
    assert silent.getvalue() == ""
    with pytest.raises(ValueError, match="progress backend"):
        Progress(1, backend="fancy")


def test_tqdm_progress_shows_the_running_stats():
    pytest.importorskip("tqdm")
    stream = io.StringIO()
    bar = Progress(2, desc="ds m", backend="tqdm", stream=stream)
    bar.update([{"correct": True, "output_tokens": 12}])
    bar.close()
    assert bar.backend == "tqdm" and "acc 100.0% tok 12.0" in stream.getvalue()


# -- every method on a real (tiny, scripted) transformers model -----------------------------------

ALL_METHODS = ["direct", "vanilla", "tale-ep", "fixed:50", "tale-pt", "oracle", "be-concise", "ccot:20", "cod"]


def test_every_method_runs_on_a_tiny_model(one_torch_thread, scripted_generator, write_jsonl, tmp_path):
    gen = scripted_generator(" 7", model_name="tiny-seven")
    rows = [{"question": f"Question {i}: what is 3 + 4?", "answer": 7.0} for i in range(1, 4)]
    ds = load_dataset(str(write_jsonl(tmp_path / "sevens.jsonl", rows)))
    search = tmp_path / "search.jsonl"
    search_to_file(gen, [SearchItem(id=ex.id, question=ex.question, gold=ex.gold) for ex in ds.examples], str(search),
                   max_tokens=8)
    results = evaluate(gen, ds, ALL_METHODS, tmp_path / "run", batch_size=2, max_tokens=8, progress="none",
                       oracle=OracleBudgets.from_file(str(search)))
    assert [r.method for r in results] == ALL_METHODS
    for result in results:
        header, records = read_records(result.path)
        assert header["model"] == "tiny-seven" and len(records) == 3, result.method
        for r in records:
            # The model writes " 7" until the cap: always the right answer, always 8 tokens, truncated.
            assert (r["answer"], r["correct"], r["output_tokens"], r["finish_reason"]) == ("7", True, 8, "length")
            assert r["counter"] == "hf:tiny-seven"
    by_method = {r.method: read_records(r.path)[1][0] for r in results}
    # The estimator's reply " 7 7 ..." has no [[N]] and no "Budget:" label: the policy's fallback (128)
    # applies, lowered to the 8-token cap.
    tale = by_method["tale-ep"]
    assert (tale["budget"], tale["budget_source"], tale["budget_adjusted"]) == (8, "fallback", "parse failed")
    assert tale["estimator_usage"]["output_tokens"] == 64 and tale["estimator"] == "zero-shot:tiny-seven"
    assert by_method["fixed:50"]["budget"] == 8 and by_method["fixed:50"]["budget_raw"] == 50
    # Vanilla answers 8 tokens; budget 4 also gives 8 (not shorter): the greedy search finds no budget.
    assert by_method["oracle"]["oracle_status"] == "no_budget" and by_method["oracle"]["budget"] is None
    assert by_method["cod"]["messages"][0]["role"] == "system"
