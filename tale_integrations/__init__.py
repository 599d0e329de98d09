"""tale-integrations: token-budget-aware reasoning (TALE) for any chat model.

The core API is framework-free::

    from tale_integrations import TalePipeline
    from tale_integrations.backends.hf import HFGenerator

    pipeline = TalePipeline(HFGenerator())          # TALE-EP on the embedded SmolLM2 model
    result = pipeline.invoke("A farmer has 12 cows and buys 5 more. How many cows?")
    print(result.text, result.budget.tokens, result.total_usage.output_tokens)

Framework adapters and backends live in subpackages and need their extras.
"""

from .core.answers import AnswerKind, extract_answer, is_correct
from .core.budget import Budget, BudgetPolicy, OnParseFailure, parse_budget
from .core.errors import TaleError
from .core.estimators import (
    BudgetEstimator,
    Estimate,
    EstimatorError,
    FixedEstimator,
    FunctionEstimator,
    ZeroShotEstimator,
)
from .core.generation import FunctionGenerator, Generation, Generator, PromptTooLongError, Usage
from .core.learned import LearnedEstimator
from .core.pipeline import Mode, TalePipeline, TaleResult
from .core.prompts import ConversationStyle, EstimationPrompt, PromptStyle, QuestionFormat
from .core.tokens import HFTokenizerCounter, TiktokenCounter, TokenCounter, counter_for

__version__ = "0.1.0"

__all__ = [
    "AnswerKind",
    "Budget",
    "BudgetEstimator",
    "BudgetPolicy",
    "ConversationStyle",
    "Estimate",
    "EstimationPrompt",
    "EstimatorError",
    "FixedEstimator",
    "FunctionEstimator",
    "FunctionGenerator",
    "Generation",
    "Generator",
    "HFTokenizerCounter",
    "LearnedEstimator",
    "Mode",
    "OnParseFailure",
    "PromptStyle",
    "PromptTooLongError",
    "QuestionFormat",
    "TaleError",
    "TalePipeline",
    "TaleResult",
    "TiktokenCounter",
    "TokenCounter",
    "Usage",
    "ZeroShotEstimator",
    "__version__",
    "counter_for",
    "extract_answer",
    "is_correct",
    "parse_budget",
]
