"""tale_integrations.eval.report and .plots: the paper-layout table, the JSON summary, the PNGs."""

from __future__ import annotations

import json

import pytest

from tale_integrations.core.generation import FunctionGenerator, Generation, Usage
from tale_integrations.core.search import SearchItem, SearchMode, search_to_file
from tale_integrations.eval.datasets import load_dataset
from tale_integrations.eval.harness import evaluate
from tale_integrations.eval.plots import _pareto, method_order, plot_accuracy_tokens, plot_elasticity
from tale_integrations.eval.prices import PriceTable
from tale_integrations.eval.report import build_report, load_results, render_markdown, write_report

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture()
def run_dir(scripted, numeric_file, five_answers, write_jsonl, tmp_path):
    """A run: 'five' with direct, vanilla, tale-ep, fixed:20; 'two' (2 questions) with vanilla only."""
    model = scripted({**five_answers, "R1": ("[[1]]", 6), "R2": ("[[0]]", 8)})
    run = tmp_path / "run"
    evaluate(model.generator, load_dataset(str(numeric_file)), ["tale-ep", "vanilla", "fixed:20", "direct"], run,
             progress="none")
    two = write_jsonl(tmp_path / "two.jsonl", [{"question": "R1?", "answer": 1}, {"question": "R2?", "answer": 2}])
    evaluate(model.generator, load_dataset(str(two)), ["vanilla"], run, progress="none")
    return run


def test_markdown_table_in_the_paper_layout(run_dir):
    report = build_report(run_dir)
    assert [(m.dataset, m.method) for m in report.metrics] == [
        ("five", "direct"), ("five", "vanilla"), ("five", "fixed:20"), ("five", "tale-ep"), ("two", "vanilla")]
    md = render_markdown(report)
    # Vanilla on 'five': 4/5 right, (10+20+30+40+50)/5 = 30 tokens, (100*0.15 + 30*0.60)/1e6 $ = $0.0330 per 1k.
    # TALE-EP adds the estimator call: (20*0.15 + 5*0.60)/1e6 -> $0.0390 per 1k.
    assert "| Dataset | Direct | Vanilla CoT | Fixed B=20 | TALE-EP |" in md
    assert ("| five | 80.00% / 30.00 / $0.0330 | 80.00% / 30.00 / $0.0330 | 80.00% / 30.00 / $0.0330 | "
            "80.00% / 30.00 / $0.0390 |") in md
    # 'two' vanilla: 1/2 right, 7 tokens, (100*0.15 + 7*0.6)/1e6 = $0.0192 per 1k; the average row is per method.
    assert "| two | – | 50.00% / 7.00 / $0.0192 | – | – |" in md
    assert "| **average** | 80.00% / 30.00 / $0.0330 | 65.00% / 18.50 / $0.0261 |" in md
    assert "counted by `reported`" in md
    assert "### five (n = 5)" in md and "### two (n = 2)" in md
    tale_row = next(line for line in md.splitlines() if line.startswith("| TALE-EP |"))
    assert "80.00% [" in tale_row and "20.0 / 5.0" in tale_row and "$0.0390 ($0.0330 + $0.0060)" in tale_row
    assert "| Vanilla CoT | 80.00% [" in md and "| baseline |" in md


def test_write_report_files_and_summary(run_dir):
    report = write_report(run_dir)
    files = report.files
    assert set(files) == {"accuracy_tokens", "markdown", "summary"}
    assert (run_dir / "accuracy_tokens.png").read_bytes()[:8] == PNG
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["counter"] == "reported" and summary["expense_unit"] == "USD per question"
    vanilla = next(m for m in summary["metrics"] if m["dataset"] == "five" and m["method"] == "vanilla")
    assert vanilla["accuracy"] == 0.8 and vanilla["output_tokens"] == 30.0 and vanilla["token_reduction"] == 0.0
    assert vanilla["expense"] == pytest.approx(33e-6)
    md = (run_dir / "report.md").read_text()
    assert "![accuracy vs output tokens](accuracy_tokens.png)" in md


def test_unknown_price_still_renders_with_na(scripted, numeric_file, five_answers, tmp_path):
    model = scripted(five_answers, model="SmolLM2-135M-Instruct")
    evaluate(model.generator, load_dataset(str(numeric_file)), ["vanilla"], tmp_path, progress="none")
    report = write_report(tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "| five | 80.00% / 30.00 / n/a |" in md
    assert "no price for model 'SmolLM2-135M-Instruct'" in md and "--prices FILE" in md
    priced = build_report(tmp_path, prices=PriceTable({"SmolLM2-135M-Instruct": {"input": 0, "output": 0}}))
    assert "80.00% / 30.00 / $0.0000" in render_markdown(priced)
    assert report.metrics[0].expense is None


def test_malformed_lines_and_oracle_statuses_are_noted(scripted, write_jsonl, tmp_path):
    rows = [{"question": "Q1?", "answer": 1}, "oops", {"question": "Q2?", "answer": 2}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    model = scripted({"Q1": ("[[1]]", 40), "Q2": ("[[2]]", 40)})
    search = tmp_path / "search.jsonl"
    ds = load_dataset(str(path))
    search_to_file(model.generator, [SearchItem(id="d:1", question="Q1?", gold="1")], str(search))
    from tale_integrations.eval.methods import OracleBudgets

    evaluate(model.generator, ds, ["oracle"], tmp_path / "run", oracle=OracleBudgets.from_file(str(search)),
             progress="none", log=lambda m: None)
    md = render_markdown(build_report(tmp_path / "run"))
    assert "d: 1 malformed line(s) skipped" in md and "line 2: not valid JSON" in md
    assert "d oracle: search status per question: missing 1, no_budget 1" in md


def test_elasticity_plot_from_a_search_file(run_dir, tmp_path):
    def fn(messages, **kw):
        content = messages[-1]["content"]
        budget = int(content.split("less than ")[1].split(" ")[0]) if "less than" in content else None
        tokens = 200 if budget is None else max(budget, 40) + (60 if budget < 20 else 0)  # elastic below 20
        return Generation(text="[[1]]", usage=Usage(output_tokens=tokens), finish_reason="stop", model="m")

    items = [SearchItem(id=f"e:{i}", question=f"E{i}?", gold="1") for i in range(3)]
    search = tmp_path / "elastic.jsonl"
    search_to_file(FunctionGenerator(fn, model_name="m"), items, str(search), mode=SearchMode.ELASTICITY)
    report = write_report(run_dir, search_file=str(search))
    assert (run_dir / "elasticity.png").read_bytes()[:8] == PNG
    assert "![token elasticity](elasticity.png)" in (run_dir / "report.md").read_text()
    assert report.files["elasticity"].endswith("elasticity.png")


def test_missing_search_file_is_a_note_not_a_crash(run_dir, tmp_path):
    report = write_report(run_dir, search_file=str(tmp_path / "nope.jsonl"))
    assert any("search file" in n and "not found" in n for n in report.notes)


def test_report_of_a_folder_without_results(tmp_path):
    with pytest.raises(FileNotFoundError, match="tale eval"):
        load_results(tmp_path)
    (tmp_path / "results").mkdir()
    with pytest.raises(FileNotFoundError, match="no results files"):
        load_results(tmp_path)


def test_pareto_front_and_method_order():
    assert _pareto([(10, 50), (20, 40), (30, 80), (5, 20), (40, 80)]) == [(5, 20), (10, 50), (30, 80)]
    names = ["oracle", "tale-ep", "fixed:100", "fixed:25", "vanilla", "direct", "cod"]
    assert sorted(names, key=method_order) == ["direct", "vanilla", "cod", "fixed:25", "fixed:100", "tale-ep", "oracle"]


def test_plots_leave_the_callers_matplotlib_backend_alone(run_dir):
    # A notebook's backend must survive a report: the plots draw with Agg on their own figures.
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        import sys, matplotlib
        matplotlib.use("svg")
        from tale_integrations.eval.report import write_report
        write_report({str(run_dir)!r})
        print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["svg", "False"]
    assert (run_dir / "accuracy_tokens.png").read_bytes()[:8] == PNG


def test_plots_refuse_empty_input(tmp_path):
    with pytest.raises(ValueError, match="no results"):
        plot_accuracy_tokens([], tmp_path / "a.png")
    with pytest.raises(ValueError, match="no budgeted answers"):
        plot_elasticity([], tmp_path / "b.png")


# -- atomic outputs: a report cut short leaves the previous one whole -------------------------------------

REPORT_FILES = ("report.md", "summary.json", "accuracy_tokens.png")


def _outputs(run_dir):
    return {name: (run_dir / name).read_bytes() for name in REPORT_FILES}


def _temporary(run_dir):
    return sorted(p.name for p in run_dir.iterdir() if p.name.endswith(".tmp"))


def test_a_plot_that_fails_while_drawing_leaves_the_old_png(run_dir, monkeypatch):
    from tale_integrations.eval import report as report_module

    write_report(run_dir)
    before = _outputs(run_dir)
    drawn_at = []

    def half_drawn(metrics, path):
        drawn_at.append(path)
        path.write_bytes(PNG)  # a cut image...
        raise RuntimeError("renderer crashed")  # ...then the crash

    monkeypatch.setattr(report_module, "plot_accuracy_tokens", half_drawn)
    with pytest.raises(RuntimeError, match="renderer crashed"):
        write_report(run_dir)
    assert _outputs(run_dir) == before and _temporary(run_dir) == []
    assert drawn_at[0].parent != run_dir and not drawn_at[0].parent.exists()  # drawn in a scratch folder, removed


def test_a_summary_that_fails_to_serialise_leaves_the_old_summary(run_dir, monkeypatch):
    from tale_integrations.eval import report as report_module

    write_report(run_dir)
    before = _outputs(run_dir)

    def broken(self):
        raise ValueError("cannot serialise")

    monkeypatch.setattr(report_module.Report, "to_dict", broken)
    with pytest.raises(ValueError, match="cannot serialise"):
        write_report(run_dir)
    assert (run_dir / "summary.json").read_bytes() == before["summary.json"] and _temporary(run_dir) == []


def test_a_report_whose_disk_fails_midway_keeps_every_old_file(run_dir, monkeypatch):
    import os

    write_report(run_dir)
    before = _outputs(run_dir)

    def fail(fd):
        raise OSError(28, "No space left on device (simulated)")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="simulated"):
        write_report(run_dir)
    assert _outputs(run_dir) == before and _temporary(run_dir) == []


def test_a_price_table_dump_that_fails_keeps_the_old_file(tmp_path, monkeypatch):
    import os

    path = tmp_path / "prices.json"
    PriceTable().dump(path)
    before = path.read_bytes()
    assert json.loads(before)["_unit"] == "USD per 1M tokens"

    def fail(fd):
        raise OSError(28, "No space left on device (simulated)")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="simulated"):
        PriceTable({"mine": {"input": 1.0, "output": 2.0}}).dump(path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["prices.json"]
