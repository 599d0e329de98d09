"""End to end on the embedded SmolLM2-135M-Instruct: 20 GSM8K-Zero questions, the table and both plots."""

from __future__ import annotations

import json

import pytest

from tale_integrations.core.estimators import ZeroShotEstimator
from tale_integrations.core.search import SearchItem, SearchMode, search_to_file
from tale_integrations.eval.datasets import load_dataset
from tale_integrations.eval.harness import evaluate
from tale_integrations.eval.report import write_report

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_embedded_model_end_to_end(one_torch_thread, embedded_generator, data_dir, tmp_path):
    gen = embedded_generator
    ds = load_dataset("gsm8k-zero", root=data_dir, limit=20)
    # A small elasticity search (4 questions, short answers) for the elasticity plot.
    search = tmp_path / "search.jsonl"
    items = [SearchItem(id=ex.id, question=ex.question, gold=ex.gold) for ex in ds.examples[:4]]
    records = search_to_file(gen, items, str(search), mode=SearchMode.ELASTICITY, max_tokens=32)
    assert len(records) == 4

    run = tmp_path / "run"
    results = evaluate(gen, ds, ["vanilla", "tale-ep"], run, batch_size=20, max_tokens=64,
                       estimator=ZeroShotEstimator(gen, max_tokens=16), progress="none")
    assert [(r.method, r.total, r.new) for r in results] == [("vanilla", 20, 20), ("tale-ep", 20, 20)]

    report = write_report(run, search_file=str(search))
    md = (run / "report.md").read_text()
    assert "| Dataset | Vanilla CoT | TALE-EP |" in md and "| gsm8k-zero |" in md
    assert "counted by `hf:SmolLM2-135M-Instruct`" in md
    assert "no price for model 'SmolLM2-135M-Instruct'" in md  # a local model: expense n/a, and how to add one
    for name in ("accuracy_tokens.png", "elasticity.png"):
        assert (run / name).read_bytes()[:8] == PNG, name
    summary = json.loads((run / "summary.json").read_text())
    by_method = {m["method"]: m for m in summary["metrics"]}
    assert set(by_method) == {"vanilla", "tale-ep"}
    for result in results:  # the summary agrees with the records themselves
        rows = [json.loads(line) for line in result.path.read_text().splitlines()[1:]]
        m = by_method[result.method]
        assert m["n"] == len(rows) == 20
        assert m["accuracy"] == pytest.approx(sum(r["correct"] for r in rows) / 20)
        assert m["output_tokens"] == pytest.approx(sum(r["output_tokens"] for r in rows) / 20)
        assert all(0 < r["output_tokens"] <= 64 for r in rows)
    assert by_method["tale-ep"]["estimator_output_tokens"] is not None and by_method["tale-ep"]["budget_n"] == 20
    assert by_method["vanilla"]["token_reduction"] == 0.0 and by_method["tale-ep"]["token_reduction"] is not None
    assert report.files["elasticity"].endswith("elasticity.png")
