"""The public surface is pinned, and importing the package stays light."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import tale_integrations

EXPECTED = {
    "AnswerKind", "Budget", "BudgetEstimator", "BudgetPolicy", "ConversationStyle", "Estimate",
    "EstimationPrompt", "EstimatorError", "FixedEstimator", "FunctionEstimator", "FunctionGenerator",
    "LearnedEstimator",
    "Generation", "Generator", "HFTokenizerCounter", "Mode", "OnParseFailure", "PromptStyle", "PromptTooLongError",
    "QuestionFormat", "TaleError", "TalePipeline", "TaleResult", "TiktokenCounter", "TokenCounter", "Usage",
    "ZeroShotEstimator", "__version__", "counter_for", "extract_answer", "is_correct", "parse_budget",
}


def test_all_is_pinned():
    assert set(tale_integrations.__all__) == EXPECTED
    for name in EXPECTED:
        assert hasattr(tale_integrations, name), name


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)


def test_import_loads_no_framework_or_model_library():
    proc = run_python(
        """
        import sys
        import tale_integrations, tale_integrations.cli
        heavy = {"torch", "transformers", "langchain_core", "langchain", "llama_index", "openai", "tiktoken"}
        print(sorted(heavy & {m.split(".")[0] for m in sys.modules}))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_the_learned_estimator_predicts_with_no_heavy_import():
    proc = run_python(
        """
        import sys, time
        from tale_integrations import TalePipeline, FunctionGenerator
        pipeline = TalePipeline(FunctionGenerator(lambda m, **kw: "so [[7]]"), estimator="learned")
        result = pipeline.invoke("Tom has 3 apples and buys 4 more. How many apples does he have?")
        heavy = {"torch", "transformers", "numpy", "langchain_core", "llama_index", "openai", "tiktoken"}
        print(result.estimator, result.budget.raw > 0, sorted(heavy & {m.split(".")[0] for m in sys.modules}))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "learned True []"


def test_missing_extra_names_the_extra_to_install():
    # Simulate an environment without torch: the hf backend must say which extra installs it.
    proc = run_python(
        """
        import sys
        sys.modules["torch"] = None  # makes `import torch` raise ImportError
        try:
            import tale_integrations.backends.hf
        except ImportError as exc:
            print(exc)
        else:
            print("imported")
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert 'pip install "tale-integrations[hf]"' in proc.stdout
    assert "'torch'" in proc.stdout


def test_require_names_module_and_extra():
    import pytest

    from tale_integrations._optional import is_available, require

    with pytest.raises(ImportError, match=r'pip install "tale-integrations\[openai\]"'):
        require("surely_not_a_module_xyz", extra="openai")
    assert is_available("json") and not is_available("surely_not_a_module_xyz")
