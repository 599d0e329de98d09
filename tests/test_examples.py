"""The examples run as users run them: offline ones on the embedded model (`slow`), with their own caps
(budgets of at most 128 tokens plus a reserve), the offline agent examples call their calculator on the
embedded model, and the endpoint agent example stops with a clear message when none is configured."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})})


@pytest.mark.slow
@pytest.mark.parametrize("name, expected", [
    ("core_pipeline.py", ["Q: Tom has 3 apples", "TALE-EP  budget=", "vanilla  answer="]),
    ("lcel_chain.py", ["budget ", "hard cap", "A (streamed):"]),
    ("rag_llamaindex.py", ["Q: How many hours is the library open on a Saturday?", "vanilla CoT"]),
    # the offline agents: the embedded model's calculator call is held to its schema (constrain=True)
    ("agent_local_langchain.py", ["Q: What is 12 times 37?", "tool call: calculator({'expression': '12 * 37'})",
                                  "tool result: 444", "(estimated)"]),
    ("agent_local_llamaindex.py", ["tool call: calculator({'expression': '12 * 37'})", "answer: '444'",
                                   "answer: '627'"]),
])
def test_offline_example_runs_on_the_embedded_model(name, expected):
    pytest.importorskip("transformers")
    proc = run_example(name)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for text in expected:
        assert text in proc.stdout, (text, proc.stdout[-2000:])


def test_agent_example_says_what_it_needs_without_an_endpoint():
    pytest.importorskip("langchain")
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    proc = subprocess.run([sys.executable, str(EXAMPLES / "agent_with_middleware.py")], capture_output=True,
                          text=True, timeout=120, env={**env, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 1
    assert "set OPENAI_API_KEY" in proc.stderr and "tool calling" in proc.stderr
