"""Evaluation: datasets, methods, a resumable harness, metrics, reports and plots.

    from tale_integrations.eval import evaluate, load_dataset, write_report
    from tale_integrations.backends.hf import HFGenerator

    data = load_dataset("gsm8k-zero", limit=100)
    evaluate(HFGenerator(), data, ["vanilla", "tale-ep", "fixed:50"], "runs/smollm")
    print(write_report("runs/smollm").files["markdown"])

The command line twins are ``tale eval`` and ``tale report``. Plots need the ``eval`` extra
(matplotlib); nothing here imports a model library.
"""

from .datasets import AnswerFormat, Dataset, DatasetError, Example, FieldMap, MalformedLine, load_dataset
from .harness import RunResult, aevaluate, evaluate
from .methods import Method, MethodKind, MethodRunner, OracleBudgets, Outcome, parse_methods
from .metrics import MethodMetrics, summarize
from .prices import Price, PriceTable
from .report import Report, build_report, render_markdown, write_report

__all__ = [
    "AnswerFormat", "Dataset", "DatasetError", "Example", "FieldMap", "MalformedLine", "Method", "MethodKind",
    "MethodMetrics", "MethodRunner", "OracleBudgets", "Outcome", "Price", "PriceTable", "Report", "RunResult",
    "aevaluate", "build_report", "evaluate", "load_dataset", "parse_methods", "render_markdown", "summarize",
    "write_report",
]
