"""Every prompt string TALE sends, in one place.

The paper's strings (Han et al. 2024, and its reference scripts) are reproduced exactly, including
their capitalisation, spacing and punctuation: golden tests pin the rendered text, so a change here
is a reviewed diff. Strings that are ours (not the paper's) say so.

Question formats (`QuestionFormat`):

- ``gsm8k``: the scripts' numeric template, ``Q: ...`` then the ``[[answer]]`` format line and the trigger.
- ``multiple_choice``: the MathBench template, the options as ``A. ...`` lines, the ``[[choice]]`` line.
- ``cloze``: the scripts' MathBench arithmetic template, ``Q: ...`` then the trigger (no format line).
- ``chat``: a free-form question followed by the trigger (ours: for applications, no answer format).

Paper mode (`PromptStyle.PAPER`) changes what is sent around these strings, never the strings: the
scripts' system message on answer calls too, and the estimator reading the question as the scripts
quote it (`estimator_input`). `PAPER_CHAT_TEMPLATE` is the scripts' raw prompt for local models.

Estimation prompt variants (`EstimationPrompt`): ``scripts`` (default, the text the reference
scripts send) and ``figure`` (the paper's printed figure).

Conversation styles (`ConversationStyle`): ``two_call`` (the paper: an estimation chat, then a
separate answer chat) and ``one_conversation`` (ours: the answer turn continues the estimation chat,
so the question is written once and a provider's prompt cache can serve the prefix).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

from .checks import check_positive_int

__all__ = [
    "BE_CONCISE",
    "BUDGETED_COT_TRIGGER",
    "CCOT_TRIGGER",
    "CHAIN_OF_DRAFT_SYSTEM_PROMPT",
    "CHOICE_FORMAT",
    "DIRECT_CHOICE_INSTRUCTION",
    "DIRECT_INSTRUCTION",
    "ESTIMATION_PROMPT_FIGURE",
    "ESTIMATION_PROMPT_SCRIPTS",
    "ESTIMATION_SYSTEM_PROMPT",
    "DIRECT_CLOZE_INSTRUCTION",
    "PAPER_CHAT_TEMPLATE",
    "SCRIPTS_SYSTEM_PROMPT",
    "PromptStyle",
    "estimator_input",
    "NUMERIC_FORMAT",
    "NUMERIC_FORMAT_EXAMPLE",
    "ONE_CONVERSATION_ANSWER_TURN",
    "OPTION_LETTERS",
    "PROMPT_VERSION",
    "VANILLA_COT_TRIGGER",
    "WRAP_UP",
    "ConversationStyle",
    "EstimationPrompt",
    "QuestionFormat",
    "answer_messages",
    "baseline_messages",
    "cot_trigger",
    "direct_prompt",
    "estimation_messages",
    "one_conversation_messages",
    "question_prompt",
    "repair_prompt",
    "REPAIR_PROMPT",
    "TALE_QUERY_TEMPLATE",
    "THINKING_WRAP_UP",
    "JSON_MODE_PROMPT",
    "STRUCTURED_OUTPUT_PROMPT",
    "TOOL_CALL_LINE",
    "TOOL_ERROR_TURN",
    "TOOL_INSTRUCTION_AUTO",
    "TOOL_INSTRUCTION_NAMED",
    "TOOL_INSTRUCTION_REQUIRED",
    "TOOL_PROMPT",
    "TOOL_PROMPT_LINE",
    "TOOL_RESULT_TURN",
    "TOOL_RESULT_TURN_UNNAMED",
    "wrap_up",
]

#: Bumped whenever a rendered prompt changes; recorded with results so runs stay comparable.
#: 2: the multiple-choice direct prompt is the scripts' own string. 3: the estimation prompt ends with a
#: newline and the multiple-choice prompt has a blank line before its format line, as in the scripts.
PROMPT_VERSION = "3"

#: The system message of every call the reference scripts make (estimation and answer).
SCRIPTS_SYSTEM_PROMPT = "You are a helpful assistant."
ESTIMATION_SYSTEM_PROMPT = SCRIPTS_SYSTEM_PROMPT

ESTIMATION_PROMPT_SCRIPTS = (
    "Task: Analyze the given question and estimate the minimum number of tokens required to generate "
    "a complete and accurate response. Please Give the response by strictly following this format: "
    "[[budget]],for example: Budget: [[12]].\n"
    "\n"
    "Below is the question:\n"
    "\n"
    'Question: "{question}"\n'
)

ESTIMATION_PROMPT_FIGURE = (
    "Task: Analyze the given question and estimate the minimum number of tokens required to generate "
    "a complete and accurate response. Please Give the response by strictly following this format: "
    "[[budget]], for example, Budget: [[12]].\n"
    "\n"
    "Below is the question:\n"
    "\n"
    'Question: "{question}"\n'
)

VANILLA_COT_TRIGGER = "Let's think step by step:"
BUDGETED_COT_TRIGGER = "Let's think step by step and use less than {budget} tokens:"

#: The answer in the numeric format line's example; a weak model often copies it (`eval.metrics` counts that).
NUMERIC_FORMAT_EXAMPLE = "50"
NUMERIC_FORMAT = (
    "Please Give the response by strictly following this format: [[answer]], "
    f"for example: Answer: [[{NUMERIC_FORMAT_EXAMPLE}]]."
)
CHOICE_FORMAT = "Please Give the response by strictly following this format: [[choice]],for example: Choice: [[A]]."

DIRECT_INSTRUCTION = (
    "Please answer the following question and give the answer directly without any reasoning process. "
    + NUMERIC_FORMAT
)
# The scripts' multiple-choice direct prompt is its own string ("strictLy" is their spelling).
DIRECT_CHOICE_INSTRUCTION = (
    "Please answer the following question directly and give the answer directly without any reasoning process. "
    "Please strictLy follow the format: [[choice]],for example: Choice: [[A]]."
)

#: The scripts' MathBench arithmetic (cloze) direct prompt; ``Q: {question}`` follows on the next line.
DIRECT_CLOZE_INSTRUCTION = "Please answer the following question and give the answer directly"

# Ours: the second user turn of the one-conversation style (the first turn is the estimation prompt,
# the assistant turn is the estimator's own reply). The format line and trigger follow it.
ONE_CONVERSATION_ANSWER_TURN = "Now answer the question above."

#: The letters of multiple-choice options, in order (at most ten options); data files and prompts share them.
OPTION_LETTERS = "ABCDEFGHIJ"


class QuestionFormat(enum.StrEnum):
    """How the question and its expected answer format are written."""

    GSM8K = "gsm8k"
    MULTIPLE_CHOICE = "multiple_choice"
    CLOZE = "cloze"
    CHAT = "chat"


class PromptStyle(enum.StrEnum):
    """Default prompting, or the reference scripts reproduced exactly (see the module docstring)."""

    DEFAULT = "default"
    PAPER = "paper"


class EstimationPrompt(enum.StrEnum):
    """Which text of the budget-estimation prompt to send."""

    SCRIPTS = "scripts"
    FIGURE = "figure"


class ConversationStyle(enum.StrEnum):
    """Whether estimation and answer are two chats or one."""

    TWO_CALL = "two_call"
    ONE_CONVERSATION = "one_conversation"


def cot_trigger(budget: int | None) -> str:
    """The chain-of-thought trigger: vanilla when ``budget`` is None, budgeted otherwise.

    Raises:
        ValueError: ``budget`` is not a positive int (the reference scripts could render
            "use less than -1 tokens"; this function never does).
    """
    if budget is None:
        return VANILLA_COT_TRIGGER
    check_positive_int("budget", budget, optional=True)
    return BUDGETED_COT_TRIGGER.format(budget=budget)


def _check_question(question: object) -> str:
    if not isinstance(question, str):
        raise TypeError(f"question must be a str, got {type(question).__name__}")
    if not question.strip():
        raise ValueError("question is empty; pass the text of the question to answer")
    return question


def _options_block(options: Sequence[str] | None) -> str:
    if options is None or isinstance(options, str) or len(options) == 0:
        raise ValueError("options must be a non-empty list of strings for the multiple_choice format")
    if len(options) > len(OPTION_LETTERS):
        raise ValueError(f"options has {len(options)} entries; at most {len(OPTION_LETTERS)} are supported")
    return "\n".join(f"{OPTION_LETTERS[i]}. {option}" for i, option in enumerate(options))


def _answer_body(fmt: QuestionFormat, question: str, options: Sequence[str] | None) -> tuple[str, str]:
    """The text before the format line and the format line (empty for chat) of a question prompt."""
    if fmt is QuestionFormat.GSM8K:
        return f"Q: {question}\n", NUMERIC_FORMAT
    if fmt is QuestionFormat.MULTIPLE_CHOICE:
        return f"{question}\n{_options_block(options)}\n\n", CHOICE_FORMAT + "\n"
    if fmt is QuestionFormat.CLOZE:
        return f"Q: {question}\n", ""
    return f"{question}\n", ""


def question_prompt(
    question: str,
    *,
    budget: int | None = None,
    format: QuestionFormat | str = QuestionFormat.GSM8K,
    options: Sequence[str] | None = None,
) -> str:
    """The user message that asks for a chain-of-thought answer.

    Args:
        question: The question text.
        budget: Token budget for the budgeted trigger; None for vanilla CoT.
        format: `QuestionFormat` (``"gsm8k"``, ``"multiple_choice"`` or ``"chat"``).
        options: The answer options, required for ``multiple_choice``.

    Returns:
        The prompt, ending with the trigger and a newline.
    """
    fmt = QuestionFormat(format)
    body, format_line = _answer_body(fmt, _check_question(question), options)
    return f"{body}{format_line}{cot_trigger(budget)}\n"


def direct_prompt(
    question: str, *, format: QuestionFormat | str = QuestionFormat.GSM8K, options: Sequence[str] | None = None
) -> str:
    """The direct-answer baseline: answer with no reasoning.

    Numeric questions (``gsm8k`` and ``chat``) ask for ``[[answer]]``; ``multiple_choice`` sends the
    scripts' own choice prompt: the instruction, then the stem and one line per option, each line
    ending in a newline, then the template's final newline; ``cloze`` the scripts' cloze prompt.
    """
    question = _check_question(question)
    fmt = QuestionFormat(format)
    if fmt is QuestionFormat.MULTIPLE_CHOICE:
        return f"{DIRECT_CHOICE_INSTRUCTION}\n{question}\n{_options_block(options)}\n\n"
    if fmt is QuestionFormat.CLOZE:
        return f"{DIRECT_CLOZE_INSTRUCTION}\nQ: {question}"
    return f"{DIRECT_INSTRUCTION}\nQ: {question}"


def estimator_input(
    question: str,
    *,
    format: QuestionFormat | str = QuestionFormat.GSM8K,
    options: Sequence[str] | None = None,
    style: PromptStyle | str = PromptStyle.DEFAULT,
) -> str:
    """The text a budget estimator reads for a question.

    Default: the question alone (what a learned estimator was fitted on; options are not counted).
    Paper: what the reference scripts quote in the estimation prompt: the whole vanilla
    chain-of-thought prompt for ``gsm8k`` and ``cloze``; the stem and its option lines, each ending in
    a newline, for ``multiple_choice``; the question alone for ``chat``.
    """
    question = _check_question(question)
    fmt = QuestionFormat(format)
    if PromptStyle(style) is PromptStyle.DEFAULT or fmt is QuestionFormat.CHAT:
        return question
    if fmt is QuestionFormat.MULTIPLE_CHOICE:
        return f"{question}\n{_options_block(options)}\n"
    return question_prompt(question, format=fmt)


def estimation_messages(
    question: str, *, variant: EstimationPrompt | str = EstimationPrompt.SCRIPTS
) -> list[dict[str, str]]:
    """The budget-estimation chat: the paper's system message and estimation prompt."""
    template = (
        ESTIMATION_PROMPT_SCRIPTS if EstimationPrompt(variant) is EstimationPrompt.SCRIPTS else ESTIMATION_PROMPT_FIGURE
    )
    return [
        {"role": "system", "content": ESTIMATION_SYSTEM_PROMPT},
        {"role": "user", "content": template.format(question=_check_question(question))},
    ]


def answer_messages(
    question: str,
    *,
    budget: int | None = None,
    format: QuestionFormat | str = QuestionFormat.GSM8K,
    options: Sequence[str] | None = None,
    system_prompt: str | None = None,
    direct: bool = False,
) -> list[dict[str, str]]:
    """The answering chat of the two-call style (or of plain CoT / direct answering).

    Args:
        question: The question text.
        budget: Token budget for the trigger; None for vanilla CoT.
        format: `QuestionFormat`.
        options: Options for ``multiple_choice``.
        system_prompt: Optional system message placed first.
        direct: Send the direct-answer baseline prompt instead (``budget`` must be None).
    """
    if direct:
        if budget is not None:
            raise ValueError("a direct-answer prompt takes no budget; pass budget=None")
        content = direct_prompt(question, format=format, options=options)
    else:
        content = question_prompt(question, budget=budget, format=format, options=options)
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": content})
    return messages


def one_conversation_messages(
    question: str,
    estimator_reply: str,
    *,
    budget: int | None,
    format: QuestionFormat | str = QuestionFormat.GSM8K,
    options: Sequence[str] | None = None,
    variant: EstimationPrompt | str = EstimationPrompt.SCRIPTS,
) -> list[dict[str, str]]:
    """The one-conversation style: the estimation chat, the estimator's reply, then the answer turn.

    The question is written once (inside the estimation prompt); the last user turn asks for the
    answer to "the question above" with the format line (for ``gsm8k`` and ``multiple_choice``) and
    the trigger carrying ``budget``, which is the clamped budget, not necessarily the raw estimate.
    """
    fmt = QuestionFormat(format)
    messages = estimation_messages(question, variant=variant)
    if fmt is QuestionFormat.GSM8K:
        format_line = NUMERIC_FORMAT
    elif fmt is QuestionFormat.MULTIPLE_CHOICE:
        format_line = f"{_options_block(options)}\n{CHOICE_FORMAT}\n"
    else:
        format_line = ""
    turn = f"{ONE_CONVERSATION_ANSWER_TURN}\n{format_line}{cot_trigger(budget)}\n"
    messages.append({"role": "assistant", "content": estimator_reply})
    messages.append({"role": "user", "content": turn})
    return messages



# Ours: what the budget enforcer writes when an answer reaches its reasoning budget, to close the
# reasoning and open the final answer in the format the prompt asked for, and what closes it.
WRAP_UP: dict[QuestionFormat, tuple[str, str]] = {
    QuestionFormat.GSM8K: ("\n\nThe final answer is [[", "]]"),
    QuestionFormat.CLOZE: ("\n\nThe final answer is [[", "]]"),
    QuestionFormat.MULTIPLE_CHOICE: ("\n\nThe final choice is [[", "]]"),
    QuestionFormat.CHAT: ("\n\nIn short, ", ""),
}


def wrap_up(format: QuestionFormat | str = QuestionFormat.GSM8K) -> tuple[str, str]:
    """The enforcer's (opening, closing) strings for a question format; closing may be empty."""
    return WRAP_UP[QuestionFormat(format)]


# Ours: what the thinking budget (``backends/thinking.py``) may write inside a thinking block at a set
# fraction of its budget, so that the model starts to conclude before the block is closed for it.
THINKING_WRAP_UP = "\n\nI am running out of thinking budget, so I will wrap up now.\n"


# Prompting baselines the evaluation compares TALE with (reference/baselines_and_needs.md), exact.
#: "Be concise": appended on its own line after the vanilla chain-of-thought prompt.
BE_CONCISE = "Be concise."
#: Concise CoT (CCoT-N): replaces the chain-of-thought trigger; ``{words}`` is N.
CCOT_TRIGGER = "Let's think a bit step by step and limit the answer length to {words} words."
#: Chain of Draft: the system message; the user turn is the question alone (and its options).
CHAIN_OF_DRAFT_SYSTEM_PROMPT = (
    "Think step by step, but only keep minimum draft for each thinking step, with 5 words at most. "
    "Return the answer at the end of the response after a separator ####."
)

_BASELINES = ("be-concise", "ccot", "cod")


def baseline_messages(
    baseline: str,
    question: str,
    *,
    format: QuestionFormat | str = QuestionFormat.GSM8K,
    options: Sequence[str] | None = None,
    words: int | None = None,
) -> list[dict[str, str]]:
    """The answering chat of a prompting baseline: ``"be-concise"``, ``"ccot"`` (needs ``words``) or ``"cod"``.

    ``be-concise`` is the vanilla CoT prompt followed by ``Be concise.`` and a newline; ``ccot`` is the
    question prompt with the CCoT trigger in place of the CoT trigger; ``cod`` is the Chain of Draft
    system message and the question alone (its own ``####`` answer format, no trigger, zero-shot).
    """
    if baseline not in _BASELINES:
        raise ValueError(f"baseline must be one of {list(_BASELINES)}, got {baseline!r}")
    fmt = QuestionFormat(format)
    if baseline == "be-concise":
        return [{"role": "user", "content": f"{question_prompt(question, format=fmt, options=options)}{BE_CONCISE}\n"}]
    body, format_line = _answer_body(fmt, _check_question(question), options)
    if baseline == "cod":
        return [
            {"role": "system", "content": CHAIN_OF_DRAFT_SYSTEM_PROMPT},
            {"role": "user", "content": body.rstrip("\n")},
        ]
    check_positive_int("words", words, hint=" (ccot needs words=N)")
    return [{"role": "user", "content": f"{body}{format_line}{CCOT_TRIGGER.format(words=words)}\n"}]


# Ours: the user turn of the one bounded repair call made when an answer hit its token cap before
# giving a final answer (LangChain `TaleRunnable`). The format line follows for gsm8k / multiple choice.
REPAIR_PROMPT = (
    "Your answer was cut off by the token limit. Do not continue the reasoning; give only the final answer now."
)

# Ours: the budgeted query of LlamaIndex's `TaleQueryTransform` (a PromptTemplate: ``{query_str}`` is
# the question, ``{cot_trigger}`` the budgeted trigger). With the default it renders exactly as
# ``question_prompt(question, budget=N, format="chat")``.
TALE_QUERY_TEMPLATE = "{query_str}\n{cot_trigger}\n"

# Ours: how local chat models without tool calling render tool turns of an agent history as text.
TOOL_RESULT_TURN = "Tool result ({name}): {content}"
TOOL_RESULT_TURN_UNNAMED = "Tool result: {content}"
TOOL_CALL_LINE = "Tool call ({name}): {arguments}"

# Ours: the generic tool prompt, a system text for local models whose chat template does not render
# tools (`core.tools.tool_prompt` fills it). A tool call is one JSON object with "name" and
# "arguments"; the results come back as `TOOL_RESULT_TURN` (`TOOL_ERROR_TURN` for a failed tool).
TOOL_PROMPT = "You can call these tools:\n{tools}\n\n{instruction}"
TOOL_PROMPT_LINE = "- {name}: {description} Arguments (JSON Schema): {parameters}"
# Each instruction is a format string (``{name}``: the tool to call), so its JSON braces are doubled.
TOOL_INSTRUCTION_AUTO = (
    'To call a tool, reply with only a JSON object of the form {{"name": "<tool name>", "arguments": '
    "{{<the arguments>}}}}. To answer without a tool, reply in plain text."
)
TOOL_INSTRUCTION_REQUIRED = (
    'Call one of these tools: reply with only a JSON object of the form {{"name": "<tool name>", '
    '"arguments": {{<the arguments>}}}}.'
)
TOOL_INSTRUCTION_NAMED = (
    'Call the tool {name}: reply with only a JSON object of the form {{"name": "{name}", '
    '"arguments": {{<the arguments>}}}}.'
)
TOOL_ERROR_TURN = "Tool error ({name}): {content}"
# Ours: structured output (`with_structured_output`) as a system text: a JSON Schema to follow, or
# JSON mode (any JSON object).
STRUCTURED_OUTPUT_PROMPT = "Reply with only a JSON object that follows this JSON Schema: {schema}"
JSON_MODE_PROMPT = "Reply with only a JSON object."


def repair_prompt(format: QuestionFormat | str = QuestionFormat.CHAT) -> str:
    """The repair turn for a question format: `REPAIR_PROMPT`, then the answer format line if any."""
    line = {QuestionFormat.GSM8K: NUMERIC_FORMAT, QuestionFormat.MULTIPLE_CHOICE: CHOICE_FORMAT}.get(QuestionFormat(format))
    return f"{REPAIR_PROMPT}\n{line}" if line else REPAIR_PROMPT


#: The reference scripts' raw prompt for local models, as a chat template: no model template, but
#: ``"You are a helpful assistant.\nUser: {prompt}\nAssistant:"`` (a system line, the user turn, and
#: ``Assistant:`` as the generation prompt). Paper mode gives it to local models.
PAPER_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n"
    "{% elif message['role'] == 'user' %}User: {{ message['content'] }}\n"
    "{% else %}Assistant: {{ message['content'] }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
