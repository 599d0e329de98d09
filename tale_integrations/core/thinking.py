"""One TALE budget mapped onto each engine's thinking control (the knob table).

A thinking model (OpenAI's o-series and gpt-5, Claude with extended thinking, Gemini 2.5 and 3,
Qwen3 / DeepSeek-R1-style models on vLLM, SGLang, llama.cpp or Ollama) spends hidden tokens before
its answer, and every engine has a setting for how many. TALE decides how many a question needs;
this module turns that number (a `Budget`) into the request fields of one engine, so the same
decision drives every knob. Where the model has no knob (or is not a thinking model), integrations
write the budget into the prompt instead (the paper's trigger).

The table is data: each `ThinkingModel` row names an engine, the model names it covers (a regular
expression), the dotted path of its numeric budget *or* of its level, the levels it accepts, its
budget range, its output cap's field and its output limit. `thinking_knob` is the one function that
reads a row; a new model family is a new row, a new engine a new `Engine` and its rows.

Rules, for every engine (see docs/thinking_models.md for the table and the versions it was checked
against):

- **Numeric budgets** (Anthropic ``thinking.budget_tokens`` up to Claude 4.6, Gemini 2.5
  ``thinking_budget``, vLLM ``thinking_token_budget``, SGLang ``custom_params.thinking_budget``,
  llama.cpp ``thinking_budget_tokens``, the local backend's ``thinking_budget``): the budget is sent,
  raised to the row's minimum or lowered to its maximum when outside it (the reason is recorded).
- **Levels** (OpenAI ``reasoning_effort``, Claude 4.7+ ``output_config.effort`` with adaptive thinking,
  Gemini 3 ``thinking_level``, Ollama ``think``): the budget picks a level by `ThinkingPolicy.level_ceilings`
  (the first level whose ceiling is at least the budget), then the lowest level the model accepts at
  or above it (the highest it accepts when none is above); ``none`` is never chosen for a budget.
- **The output cap.** Every engine counts thinking inside its output cap, so the cap is set to the
  thinking allowance (the budget sent, or the chosen level's ceiling) plus `ThinkingPolicy.answer_reserve`.
  When that exceeds the model's output limit (the row's, or a ``limit`` the caller gives: its own
  cap, the room left in the context), the budget is lowered so that the reserve still fits; if even
  the row's minimum budget cannot fit, the knob is not used (`ThinkingKnob.applied` is False, the
  reason in ``adjusted``) and the integration falls back to the prompt. No request is ever invalid.
- **No budget** (``budget=None``: unlimited thinking): only the fields that switch thinking on are
  sent (plus a numeric budget where the engine requires one, set to fill the output limit), and the
  cap only where the engine requires it or a ``limit`` is given.
- **Tool calls** (``cap=False``): the budget still bounds the thinking, but no output cap that could
  cut a tool call's arguments is sent; an engine that requires a cap (Anthropic) gets its output limit.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .budget import Budget
from .checks import check_int, check_positive_int, is_int
from .errors import TaleTypeError, TaleValueError

__all__ = [
    "LEVELS",
    "THINKING_MODELS",
    "THINKING_NAMES",
    "Engine",
    "ThinkingKnob",
    "ThinkingModel",
    "ThinkingPolicy",
    "engine_named",
    "NAMED_ENGINES",
    "find_thinking_model",
    "looks_like_thinking_model",
    "normalize_model_name",
    "resolve_thinking",
    "thinking_knob",
]


class Engine(enum.StrEnum):
    """Who runs the model, which decides the request fields."""

    OPENAI = "openai"  #: OpenAI's API (Chat Completions)
    ANTHROPIC = "anthropic"  #: Anthropic's Messages API
    GEMINI = "gemini"  #: Google's Gemini API (google-genai ``GenerateContentConfig``)
    VLLM = "vllm"  #: vLLM's OpenAI-compatible server
    SGLANG = "sglang"  #: SGLang's OpenAI-compatible server
    LLAMACPP = "llamacpp"  #: llama.cpp's ``llama-server``
    OLLAMA = "ollama"  #: Ollama's ``/api/chat``
    HF = "hf"  #: this package's local backend (``HFGenerator(thinking_budgets=...)``)


#: Every level any engine names, weakest first (OpenAI's scale; the others use subsets of it).
LEVELS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")

#: Open-weights thinking families, by name (for engines that serve any model: Ollama, vLLM...).
THINKING_NAMES = (r"qwen3(?!.*(instruct|coder))|qwq|deepseek-r1|r1-distill|deepseek-v3\.[12]|gpt-oss|magistral"
                  r"|phi-4(-mini)?-reasoning|exaone-deep|glm-4\.[5-9]|glm-z1|kimi-k2-thinking|smollm3|seed-oss"
                  r"|hermes-4|minimax-m[12]|thinking")


@dataclass(frozen=True, slots=True, kw_only=True)
class ThinkingModel:
    """One row of the knob table: a model family on one engine and how its thinking is set.

    Attributes:
        engine: The `Engine`.
        family: A short label for records and docs (``"claude 4.5 (budget_tokens)"``).
        pattern: Regular expression searched in the normalized model name (`normalize_model_name`);
            None for the engine's default row, used only when the engine is declared and no other
            row matches.
        budget_field: Dotted path of a numeric thinking budget (``"thinking.budget_tokens"``).
        level_field: Dotted path of a level (``"reasoning_effort"``); a row has one of the two, or
            neither (the knob is then only ``fixed`` and the cap).
        levels: The levels the family accepts, from `LEVELS`, weakest first.
        cap_field: Dotted path of the output cap, which counts thinking and answer together.
        cap_required: The engine refuses a request without the cap (Anthropic's ``max_tokens``).
        budget_required: The engine refuses thinking without a numeric budget (Anthropic's enabled form).
        fixed: Fields sent with the knob whatever the budget (``{"thinking": {"type": "adaptive"}}``).
        budget_min, budget_max: The numeric budget's range (``budget_max`` None: only the output limit).
        max_output_tokens: The model's output limit, thinking included (None: unknown).
        note: What the server needs for the knob to work, recorded with each knob.
    """

    engine: Engine | str
    family: str
    pattern: str | None = None
    budget_field: str | None = None
    level_field: str | None = None
    levels: tuple[str, ...] = ()
    cap_field: str = "max_tokens"
    cap_required: bool = False
    budget_required: bool = False
    fixed: Mapping[str, Any] = field(default_factory=dict)
    budget_min: int = 0
    budget_max: int | None = None
    max_output_tokens: int | None = None
    note: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "engine", Engine(self.engine))
        if self.budget_field and self.level_field:
            raise TaleValueError(f"ThinkingModel {self.family!r}: give budget_field or level_field, not both")
        if self.level_field and not self.levels:
            raise TaleValueError(f"ThinkingModel {self.family!r}: a level_field needs the accepted levels")
        unknown = [lv for lv in self.levels if lv not in LEVELS]
        if unknown:
            raise TaleValueError(f"ThinkingModel {self.family!r}: unknown levels {unknown}; choose from {LEVELS}")
        order = [LEVELS.index(lv) for lv in self.levels]
        if order != sorted(set(order)):
            raise TaleValueError(f"ThinkingModel {self.family!r}: levels must be distinct and weakest first")
        check_int(f"ThinkingModel({self.family!r}).budget_min", self.budget_min, low=0)
        check_positive_int(f"ThinkingModel({self.family!r}).budget_max", self.budget_max, optional=True)
        check_positive_int(f"ThinkingModel({self.family!r}).max_output_tokens", self.max_output_tokens, optional=True)
        if self.budget_max is not None and self.budget_max < self.budget_min:
            raise TaleValueError(f"ThinkingModel {self.family!r}: budget_max is below budget_min")
        if self.budget_required and not self.budget_field:
            raise TaleValueError(f"ThinkingModel {self.family!r}: budget_required needs a budget_field")
        if self.pattern is not None:
            re.compile(self.pattern)
        object.__setattr__(self, "fixed", dict(self.fixed))

    def matches(self, model: str) -> bool:
        """Whether this row covers ``model`` (any name, normalized here)."""
        return self.pattern is not None and re.search(self.pattern, normalize_model_name(model)) is not None

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form."""
        d = dataclasses.asdict(self)
        d["engine"], d["levels"] = str(self.engine), list(self.levels)
        return d


def _row(engine: Engine, family: str, pattern: str | None, **fields: Any) -> ThinkingModel:
    return ThinkingModel(engine=engine, family=family, pattern=pattern, **fields)


def _claude(names: str, minor: str) -> str:
    """A Claude model name: ``claude-<names>-<minor>``, optionally dated (``-20250514``), nothing newer after it."""
    return rf"claude-({names})-{minor}(-\d{{8}}|(?=[^-\d]|$))"


_OPENAI = {"level_field": "reasoning_effort", "cap_field": "max_completion_tokens"}
_LOW_HIGH = ("low", "medium", "high")
_CLAUDE_BUDGET = {"budget_field": "thinking.budget_tokens", "budget_min": 1024, "cap_required": True,
                  "budget_required": True, "fixed": {"thinking": {"type": "enabled"}}}
_CLAUDE_ADAPTIVE = {"level_field": "output_config.effort", "cap_required": True,
                    "fixed": {"thinking": {"type": "adaptive"}}}
_GEMINI_BUDGET = {"budget_field": "thinking_config.thinking_budget", "cap_field": "max_output_tokens",
                  "max_output_tokens": 65536}
_GEMINI_LEVEL = {"level_field": "thinking_config.thinking_level", "cap_field": "max_output_tokens",
                 "max_output_tokens": 65536}
_VLLM_NOTE = "vLLM applies thinking_token_budget only when the server runs with --reasoning-parser"
_SGLANG_NOTE = ("SGLang applies custom_params.thinking_budget only with --enable-strict-thinking and "
                "SGLANG_MAX_THINK_TOKENS >= 0 (or the ThinkingBudgetLogitProcessor with "
                "--enable-custom-logit-processor)")
_LLAMACPP_NOTE = ("llama-server applies thinking_budget_tokens only when the chat template has a thinking end tag "
                  "(and, on builds before May 2026, only with --reasoning-budget -1)")

#: The knob table, first match wins within an engine. Field names and ranges: docs/thinking_models.md.
THINKING_MODELS: tuple[ThinkingModel, ...] = (
    # OpenAI: no numeric budget; a level, and max_completion_tokens bounding thinking plus answer.
    _row(Engine.OPENAI, "o1-mini / o1-preview (no effort setting)", r"^o1-(mini|preview)",
         cap_field="max_completion_tokens", max_output_tokens=65536),
    _row(Engine.OPENAI, "o-series", r"^o[1-9](?!\d)", levels=_LOW_HIGH, max_output_tokens=100000, **_OPENAI),
    _row(Engine.OPENAI, "gpt-5-pro", r"^gpt-5-pro", levels=("high",), max_output_tokens=272000, **_OPENAI),
    _row(Engine.OPENAI, "gpt-5", r"^gpt-5(-mini|-nano|-codex(-mini)?)?(-\d{4}-\d{2}-\d{2})?(:|$)",
         levels=("minimal", *_LOW_HIGH), max_output_tokens=128000, **_OPENAI),
    _row(Engine.OPENAI, "gpt-5.1-codex-max", r"^gpt-5\.1-codex-max", levels=(*_LOW_HIGH, "xhigh"),
         max_output_tokens=128000, **_OPENAI),
    _row(Engine.OPENAI, "gpt-5.1", r"^gpt-5\.1(?!\d)(?!.*chat)", levels=("none", *_LOW_HIGH),
         max_output_tokens=128000, **_OPENAI),
    _row(Engine.OPENAI, "gpt-5.2 to 5.5", r"^gpt-5\.[2-5](?!\d)(?!.*chat)", levels=("none", *_LOW_HIGH, "xhigh"),
         max_output_tokens=128000, **_OPENAI),
    _row(Engine.OPENAI, "gpt-5.6 and later", r"^gpt-(5\.([6-9]|\d\d)|[6-9])(?!.*chat)",
         levels=("none", *_LOW_HIGH, "xhigh", "max"), max_output_tokens=128000, **_OPENAI),
    _row(Engine.OPENAI, "openai (declared)", None, levels=_LOW_HIGH, **_OPENAI),
    # Anthropic: budget_tokens (>= 1024, below max_tokens) up to 4.6; adaptive thinking + effort from 4.7.
    _row(Engine.ANTHROPIC, "claude 3.7 sonnet (budget_tokens)", r"claude-3-7-sonnet", max_output_tokens=64000,
         **_CLAUDE_BUDGET),
    _row(Engine.ANTHROPIC, "claude opus 4 / 4.1 (budget_tokens)", _claude("opus", r"4(-1)?"),
         max_output_tokens=32000, **_CLAUDE_BUDGET),
    _row(Engine.ANTHROPIC, "claude sonnet 4 (budget_tokens)", _claude("sonnet", "4"), max_output_tokens=64000,
         **_CLAUDE_BUDGET),
    _row(Engine.ANTHROPIC, "claude 4.5 (budget_tokens)", _claude("opus|sonnet|haiku", "4-5"),
         max_output_tokens=64000, **_CLAUDE_BUDGET),
    _row(Engine.ANTHROPIC, "claude 4.6 (budget_tokens)", _claude("opus|sonnet", "4-6"), max_output_tokens=128000,
         **_CLAUDE_BUDGET),
    _row(Engine.ANTHROPIC, "claude opus 4.7+ (adaptive, effort)", r"claude-opus-4-([7-9]|\d\d)",
         levels=(*_LOW_HIGH, "xhigh", "max"), max_output_tokens=128000, **_CLAUDE_ADAPTIVE),
    _row(Engine.ANTHROPIC, "claude haiku 5.x (adaptive, effort)", r"claude-haiku-[5-9]", levels=_LOW_HIGH,
         max_output_tokens=128000, **_CLAUDE_ADAPTIVE),
    _row(Engine.ANTHROPIC, "claude 5.x (adaptive, effort)", r"claude-(opus|sonnet|fable|mythos)-([5-9]|preview)",
         levels=(*_LOW_HIGH, "xhigh", "max"), max_output_tokens=128000, **_CLAUDE_ADAPTIVE),
    _row(Engine.ANTHROPIC, "anthropic (declared, adaptive)", None, levels=_LOW_HIGH, **_CLAUDE_ADAPTIVE),
    # Gemini: thinking_budget on 2.5 (per-model ranges), thinking_level on 3+; never both.
    _row(Engine.GEMINI, "gemini 2.5 pro", r"gemini-2\.5-pro", budget_min=128, budget_max=32768, **_GEMINI_BUDGET),
    _row(Engine.GEMINI, "gemini 2.5 flash-lite", r"gemini-2\.5-flash-lite", budget_min=512, budget_max=24576,
         **_GEMINI_BUDGET),
    _row(Engine.GEMINI, "gemini 2.5 flash", r"gemini-2\.5-flash(?!.*(image|tts|live))", budget_min=1,
         budget_max=24576, **_GEMINI_BUDGET),
    _row(Engine.GEMINI, "gemini 3 pro", r"gemini-3(\.0)?-pro(?!.*image)", levels=("low", "high"), **_GEMINI_LEVEL),
    _row(Engine.GEMINI, "gemini 3.x pro", r"gemini-3\.\d+-pro(?!.*image)", levels=_LOW_HIGH, **_GEMINI_LEVEL),
    _row(Engine.GEMINI, "gemini 3+ flash", r"gemini-([3-9])[.\d]*-flash(?!.*(image|tts|live))",
         levels=("minimal", *_LOW_HIGH), **_GEMINI_LEVEL),
    _row(Engine.GEMINI, "gemini 3+ (other)", r"gemini-([3-9])(?!.*(image|tts|live))", levels=("low", "high"),
         **_GEMINI_LEVEL),
    _row(Engine.GEMINI, "gemini (declared)", None, levels=("low", "high"), **_GEMINI_LEVEL),
    # Open-weights engines: one row each, any model the server runs (declared by the caller).
    _row(Engine.VLLM, "vllm", None, budget_field="thinking_token_budget", note=_VLLM_NOTE),
    _row(Engine.SGLANG, "sglang (strict thinking)", None, budget_field="custom_params.thinking_budget",
         note=_SGLANG_NOTE),
    _row(Engine.LLAMACPP, "llama.cpp server", None, budget_field="thinking_budget_tokens", note=_LLAMACPP_NOTE),
    _row(Engine.OLLAMA, "ollama gpt-oss (think level)", r"gpt-oss", level_field="think", levels=_LOW_HIGH,
         cap_field="options.num_predict"),
    _row(Engine.OLLAMA, "ollama thinking model (think on)", THINKING_NAMES, fixed={"think": True},
         cap_field="options.num_predict"),
    _row(Engine.OLLAMA, "ollama (declared, think on)", None, fixed={"think": True}, cap_field="options.num_predict"),
    _row(Engine.HF, "local thinking template", None, budget_field="thinking_budget",
         note="HFGenerator applies it to chat templates with a thinking block"),
)

#: Engines whose thinking models are known by name alone (the others serve any model: declare them).
NAMED_ENGINES = (Engine.OPENAI, Engine.ANTHROPIC, Engine.GEMINI)


def normalize_model_name(model: str) -> str:
    """The name the table's patterns read: lower case, without a ``provider/`` or ``models/`` prefix,
    an ``ft:`` marker or a Bedrock ``anthropic.`` / ``us.`` prefix."""
    name = str(model).strip().lower().rsplit("/", 1)[-1].removeprefix("ft:")
    return re.sub(r"^([a-z]{2}\.)?anthropic\.", "", name)


def looks_like_thinking_model(model: str) -> bool:
    """Whether the name is a known thinking family (vendor rows, or `THINKING_NAMES`)."""
    return find_thinking_model(model) is not None or re.search(THINKING_NAMES, normalize_model_name(model)) is not None


def find_thinking_model(model: str, engine: Engine | str | None = None, *,
                        table: tuple[ThinkingModel, ...] = THINKING_MODELS) -> ThinkingModel | None:
    """The table row for ``model``: the first row of ``engine`` whose pattern matches its name, else
    that engine's default row; without ``engine``, the first matching row of OpenAI, Anthropic or
    Gemini (the engines whose models are known by name). None when nothing applies.
    """
    engines = NAMED_ENGINES if engine is None else (Engine(engine),)
    for row in table:
        if row.engine in engines and row.matches(model):
            return row
    if engine is None:
        return None
    return next((row for row in table if row.engine == Engine(engine) and row.pattern is None), None)


def engine_named(name: str, *, alternatives: str) -> Engine:
    """The `Engine` a ``thinking=`` string names (case and spaces ignored); a clear error otherwise,
    offering ``alternatives`` beside the engine names."""
    try:
        return Engine(name.strip().lower())
    except ValueError:
        raise TaleValueError(f"thinking={name!r} names no engine; choose from {', '.join(Engine)}, "
                             f"or pass {alternatives}") from None


def resolve_thinking(declared: Any, model: str, *, engine: Engine | str | None = None) -> ThinkingModel | None:
    """The row a caller's ``thinking=`` setting stands for (every integration takes the same values).

    Args:
        declared: None (detect: the model's row when ``engine`` or the name identifies one), False (never
            use a knob: the prompt carries the budget), True (a thinking model: its row, which must be
            found), an `Engine` name (``"vllm"``; that engine's row for the model), or a `ThinkingModel`.
        model: The model's name.
        engine: The engine the integration knows it talks to (a LangChain class's vendor), if any.

    Raises:
        TaleValueError: ``declared`` is True but no row applies (the message lists the engines), or an
            unknown engine name.
        TaleTypeError: ``declared`` is of another type.
    """
    if declared is None:
        row = find_thinking_model(model, engine) if engine is not None else find_thinking_model(model)
        if row is not None and row.pattern is None:  # an engine's default row is for declared models only
            return None
        return row
    if declared is False:
        return None
    if isinstance(declared, ThinkingModel):
        return declared
    if declared is True:
        row = find_thinking_model(model, engine) if engine is not None else find_thinking_model(model)
        if row is None:
            raise TaleValueError(
                f"thinking=True but {model!r} is not a known thinking model here; name its engine instead: "
                f"thinking='vllm' (one of {', '.join(e.value for e in Engine)}), or pass a ThinkingModel"
            )
        return row
    if isinstance(declared, str):
        return find_thinking_model(model, engine_named(declared, alternatives="True, False or a ThinkingModel"))
    raise TaleTypeError(
        f"thinking must be None, a bool, an engine name or a ThinkingModel, got {type(declared).__name__}"
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ThinkingPolicy:
    """The numbers that map a budget onto a knob (see the module docstring).

    Attributes:
        answer_reserve: Output tokens kept for the visible answer on top of the thinking allowance,
            in the output cap. Default 1024.
        level_ceilings: ``(level, ceiling)`` pairs, weakest first: a budget up to the ceiling maps to
            that level; above the last ceiling, ``"max"``. Defaults: minimal <= 256, low <= 2048,
            medium <= 8192, high <= 32768, xhigh <= 65536 (chosen so that the budgets TALE estimates for
            school math, 20 to 300 tokens, ask for the least thinking a model offers).
    """

    answer_reserve: int = 1024
    level_ceilings: tuple[tuple[str, int], ...] = (("minimal", 256), ("low", 2048), ("medium", 8192),
                                                   ("high", 32768), ("xhigh", 65536))

    def __post_init__(self) -> None:
        check_positive_int("ThinkingPolicy.answer_reserve", self.answer_reserve)
        pairs = tuple((str(lv), c) for lv, c in self.level_ceilings)
        for lv, ceiling in pairs:
            if lv not in LEVELS or lv in ("none", "max"):
                raise TaleValueError(f"ThinkingPolicy.level_ceilings: {lv!r} is not a level below 'max' ({LEVELS})")
            check_positive_int(f"ThinkingPolicy.level_ceilings[{lv!r}]", ceiling)
        if [LEVELS.index(lv) for lv, _ in pairs] != sorted({LEVELS.index(lv) for lv, _ in pairs}) or \
                [c for _, c in pairs] != sorted({c for _, c in pairs}):
            raise TaleValueError("ThinkingPolicy.level_ceilings must go weakest level first with rising ceilings")
        object.__setattr__(self, "level_ceilings", pairs)

    def level_for(self, budget: int) -> str:
        """The level a budget asks for, before the model's accepted levels apply."""
        return next((lv for lv, ceiling in self.level_ceilings if budget <= ceiling), "max")

    def budget_for(self, level: str) -> int | None:
        """The thinking budget a level stands for, the inverse of `level_for`: the ceiling of the first
        level at or above it; 0 for ``"none"``; None (unlimited) for ``"max"`` and above the last ceiling.

        Raises:
            TaleValueError: ``level`` is not one of `LEVELS`.
        """
        if level not in LEVELS:
            raise TaleValueError(f"a thinking level is one of {list(LEVELS)}, got {level!r}")
        if level == "none":
            return 0
        rank = LEVELS.index(level)
        return next((ceiling for lv, ceiling in self.level_ceilings if LEVELS.index(lv) >= rank), None)

    def allowance(self, level: str, budget: int) -> int:
        """Thinking tokens the output cap allows at ``level``: its ceiling (the budget if larger)."""
        ceilings = dict(self.level_ceilings)
        if level in ceilings:
            return max(budget, ceilings[level])
        below = [c for lv, c in self.level_ceilings if LEVELS.index(lv) < LEVELS.index(level)]
        return max([budget, *below[-1:]])

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form."""
        return {"answer_reserve": self.answer_reserve, "level_ceilings": [list(p) for p in self.level_ceilings]}


@dataclass(frozen=True, slots=True, kw_only=True)
class ThinkingKnob:
    """One request's thinking setting, as `thinking_knob` decided it.

    Attributes:
        engine: The `Engine` (its value).
        family: The table row's family.
        model: The model's name.
        budget: The numeric thinking budget sent (None for a level, or unlimited thinking).
        level: The level sent (None for a numeric budget).
        max_tokens: The output cap sent (thinking and answer), or None when none is sent.
        fields: The request fields, nested as the engine's API takes them (``{"thinking": {"type":
            "enabled", "budget_tokens": 1024}, "max_tokens": 2048}``); empty when the knob is not applied.
        applied: Whether the knob is used; False when the budget cannot be honoured (see ``adjusted``),
            in which case the integration writes the budget into the prompt.
        adjusted: Why the budget, level or cap differ from what was asked (comma-joined), if they do.
        note: What the server needs for the knob to take effect (from the row).
    """

    engine: str
    family: str
    model: str
    budget: int | None
    level: str | None
    max_tokens: int | None
    fields: dict[str, Any]
    applied: bool = True
    adjusted: str | None = None
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (the ``thinking`` value of a budget record)."""
        return dataclasses.asdict(self)


def _put(fields: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = fields
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value


def _merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in base.items()}
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _snap(level: str, accepted: tuple[str, ...]) -> str:
    """The lowest accepted level at or above ``level`` (``none`` excluded), else the highest accepted."""
    usable = [lv for lv in accepted if lv != "none"] or list(accepted)
    above = [lv for lv in usable if LEVELS.index(lv) >= LEVELS.index(level)]
    return above[0] if above else usable[-1]


def _tokens(budget: Budget | int | None) -> int | None:
    if budget is None or isinstance(budget, Budget):
        return None if budget is None else budget.tokens
    if not is_int(budget) or budget < 1:
        raise TaleValueError(f"budget must be a positive int, a Budget or None, got {budget!r}")
    return budget


def thinking_knob(
    row: ThinkingModel,
    budget: Budget | int | None,
    *,
    model: str = "",
    policy: ThinkingPolicy | None = None,
    limit: int | None = None,
    cap: bool = True,
) -> ThinkingKnob:
    """The request fields that give ``model`` (covered by ``row``) the thinking budget ``budget``.

    Args:
        row: The table row (`find_thinking_model`, `resolve_thinking`).
        budget: The decided `Budget` (or its tokens); None for unlimited thinking (the engine's own).
        model: The model's name (recorded).
        policy: `ThinkingPolicy` (answer reserve, level ceilings); default ``ThinkingPolicy()``.
        limit: A further output limit: the caller's own cap, or the room left in the context window.
        cap: False when the request may emit a tool call: no cap that could cut its arguments is sent
            (an engine that requires one gets the output limit).

    Returns:
        A `ThinkingKnob`; its ``fields`` never hold an invalid request (see the module docstring).
    """
    if not isinstance(row, ThinkingModel):
        raise TaleTypeError(f"row must be a ThinkingModel, got {type(row).__name__}")
    policy = policy or ThinkingPolicy()
    check_positive_int("limit", limit, optional=True)
    tokens = _tokens(budget)
    limits = [v for v in (row.max_output_tokens, limit) if v is not None]
    room = min(limits) if limits else None
    reserve = policy.answer_reserve
    notes: list[str] = []
    fields: dict[str, Any] = _merge({}, row.fixed)
    sent_budget: int | None = None
    level: str | None = None
    allowance: int | None = None

    def refused(reason: str) -> ThinkingKnob:
        return ThinkingKnob(engine=str(row.engine), family=row.family, model=model, budget=None, level=None,
                            max_tokens=None, fields={}, applied=False, adjusted=reason, note=row.note)

    if row.budget_field and (tokens is not None or row.budget_required):
        lowest = max(row.budget_min, 1)
        if tokens is None:  # unlimited on an engine that needs a number: all the room the reserve leaves
            if room is None:
                return refused(f"{row.family} needs a numeric thinking budget and the model's output limit is unknown")
            value = room - reserve if row.budget_max is None else min(row.budget_max, room - reserve)
        else:
            value = tokens
        if value < lowest:
            if tokens is not None:
                notes.append(f"raised to the engine's minimum ({lowest})")
            value = lowest
        if row.budget_max is not None and value > row.budget_max:
            value = row.budget_max
            notes.append(f"lowered to the model's maximum thinking budget ({row.budget_max})")
        if room is not None and value + reserve > room:
            if room - reserve >= lowest:
                value = room - reserve
                notes.append(f"lowered to fit the output limit ({room}) with the answer reserve ({reserve})")
            elif room > lowest:
                value, reserve = lowest, room - lowest
                notes.append(f"answer reserve cut to {reserve} to fit the output limit ({room})")
            else:
                return refused(f"the output limit ({room}) leaves no room above the engine's minimum thinking "
                               f"budget ({lowest}); the budget goes into the prompt")
        sent_budget = allowance = value
        _put(fields, row.budget_field, value)
    elif row.level_field and tokens is not None:
        wanted = policy.level_for(tokens)
        level = _snap(wanted, row.levels)
        if level != wanted:
            notes.append(f"level {wanted!r} is not accepted; sent {level!r}")
        allowance = policy.allowance(level, tokens)
        _put(fields, row.level_field, level)
    elif tokens is not None:  # neither a budget nor a level: only the cap carries the budget
        allowance = tokens
        notes.append("no numeric budget or level on this model; only the output cap applies")

    max_tokens: int | None = None
    if not cap:
        if row.cap_required:
            max_tokens = room if room is not None else (allowance or 0) + reserve
            notes.append("output cap raised to the output limit: the request may emit a tool call")
        else:
            notes.append("no output cap: the request may emit a tool call")
    elif allowance is not None:
        max_tokens = allowance + reserve
        if room is not None and max_tokens > room:
            max_tokens = room
            notes.append(f"output cap lowered to the output limit ({room})")
    elif row.cap_required or limit is not None:
        max_tokens = room if room is not None else reserve
    if max_tokens is not None:
        _put(fields, row.cap_field, max_tokens)
    return ThinkingKnob(engine=str(row.engine), family=row.family, model=model, budget=sent_budget, level=level,
                        max_tokens=max_tokens, fields=fields, applied=True, adjusted=", ".join(notes) or None,
                        note=row.note)
