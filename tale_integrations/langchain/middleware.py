"""`TaleBudgetMiddleware`: TALE-EP for agents built with ``langchain.agents.create_agent``.

The budget goes into the model *request* only: ``wrap_model_call`` rewrites the last human
message of the request (``request.override(messages=...)``), so the conversation saved in the
agent state keeps the user's own words.

Tool loops (a design choice, explained here): the budget is estimated once per human turn, on
the turn's first model call, and recorded in the state (``tale_budgets``). Every later model call
of the same turn (after a tool call, with tool results) reuses that budget without estimating
again and sends the same rewritten human message, so the model sees one consistent conversation
across the loop (and a provider's prompt cache keeps its prefix). A turn that already holds a tool
call or tool result but has no recorded budget (the middleware was added mid-turn, or the state
was dropped) is passed through untouched: a budget is never estimated in the middle of a loop.

The hard cap (``max_tokens`` in ``model_settings``) is off by default here, unlike `TaleRunnable`:
in an agent any model call may be a tool call, and a cap can cut its arguments.

Tool calls (a budget never applies to a call that writes tool-call arguments):

- a request that carries tools gets no output cap that could cut a tool call's JSON: the hard cap
  is left off, and a thinking model's knob keeps its thinking budget but sends no cap (or, where the
  engine requires one, its output limit); the record says so (``cap_skipped``);
- a request whose ``tool_choice`` forces a tool call is passed through untouched (no budget in the
  prompt, no knob, no record): that call writes arguments, not reasoning. The budget prompt and the
  knob go only on calls where the model may reason and answer.

Thinking models (`core.thinking`): when the agent's model is one (detected from its class and name,
or declared with ``thinking=``), the budget goes to its thinking knob instead of the prompt, and the
human message is sent without the trigger; ``budget_via`` and ``thinking`` in each record say which.
"""

from __future__ import annotations

import dataclasses
import hashlib
import operator
from collections.abc import Awaitable, Callable
from collections.abc import Generator as PyGenerator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from langchain.agents.middleware import AgentMiddleware, AgentState, ExtendedModelResponse, ModelRequest, ModelResponse
from langchain.agents.middleware.types import ResponseT
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.runnables.config import RunnableConfig, ensure_config
from langgraph.types import Command
from typing_extensions import NotRequired

from ..core.budget import BudgetPolicy
from ..core.checks import check_positive_int
from ..core.decision import BudgetRecord, decide_budget, estimator_failure
from ..core.estimators import BudgetEstimator, Estimate, EstimatorError, is_zero_shot
from ..core.flows import adrive, drive
from ..core.prompts import EstimationPrompt, QuestionFormat
from ..core.thinking import ThinkingModel, ThinkingPolicy
from ._adapters import (
    ESTIMATE_TAG,
    NOSTREAM_TAG,
    accepts_max_tokens,
    as_estimator,
    budgeted_messages,
    call_configs,
    last_human_index,
    model_max_tokens,
    to_usage_metadata,
)
from ._thinking import budget_of, thinking_target, thinks

__all__ = ["TaleAgentState", "TaleBudgetMiddleware"]


class TaleAgentState(AgentState[ResponseT]):
    """Agent state with TALE's record: one dict per model call the middleware budgeted.

    Each record: ``message_id`` (the human message the budget belongs to: its id, or a hash of
    its text when it has none), the budget record (`core.decision.RECORD_KEYS`: ``budget``,
    ``budget_raw``, ``budget_source``, ``budget_adjusted``, ``estimator``, ``estimator_reply``,
    ``estimator_error``, ``estimator_usage``, the last for the estimating call only, ``budget_via``,
    ``thinking``), ``estimated`` (True on the call that ran the estimator, False when the turn's budget
    was reused), ``max_tokens`` (the output cap sent: the hard cap or the knob's, or None),
    ``cap_skipped`` (why no cap was sent where one would have been: the request carries tools; else
    None) and ``usage`` (the model call's ``usage_metadata``).
    """

    tale_budgets: NotRequired[Annotated[list[dict[str, Any]], operator.add]]


def _forces_tool_call(tool_choice: Any) -> bool:
    """Whether a request's ``tool_choice`` makes the model call a tool (``"any"``, ``"required"``, a tool)."""
    return tool_choice not in (None, "auto", "none") and tool_choice is not False


@dataclass(frozen=True, slots=True)
class _Turn:
    index: int  # of the last human message in request.messages
    key: str
    question: str
    cached: dict[str, Any] | None  # this turn's last record, when it has one


@dataclass(frozen=True, slots=True)
class _EstimateTurn:
    estimator: BudgetEstimator
    question: str


class TaleBudgetMiddleware(AgentMiddleware[TaleAgentState[Any], Any]):
    """Put a TALE budget into each human turn's model calls, without changing the saved conversation.

    Args:
        estimator: None (the paper's zero-shot estimator on the agent's model, asked without tools),
            a chat model (zero-shot on it), a core `BudgetEstimator`, a Runnable / function
            returning a number, or a name: ``"learned"`` (the shipped learned estimator: no model
            call, zero estimator tokens), ``"learned:PATH"``, ``"zero-shot"``, ``"fixed:N"``.
        budget: A fixed budget for every turn (no estimation).
        policy: `BudgetPolicy` (floor, cap, scale α, fallback).
        format: `QuestionFormat` of the rewritten human message; default ``"chat"``.
        hard_cap: Also set ``max_tokens = budget + answer_reserve`` for models with a ``max_tokens``
            setting (never on a model that thinks, nor on a request that carries tools). Off by
            default: a cap can cut a tool call's arguments.
        answer_reserve: Tokens beyond the budget for the hard cap.
        on_estimator_error: ``"raise"`` (an `EstimatorError`) or ``"fallback"`` (the policy's rule).
        estimation_prompt: `EstimationPrompt` variant for the zero-shot estimator.
        estimator_max_tokens: Cap on the zero-shot estimator's reply.
        thinking: Whether the model's thinking knob carries the budget (`core.thinking.resolve_thinking`):
            None detects it from the agent model's class and name, False never, True / an engine name /
            a `core.thinking.ThinkingModel` declares it.
        thinking_policy: `core.thinking.ThinkingPolicy` (answer reserve, effort thresholds).

    Example:
        ```python
        agent = create_agent(ChatOpenAI(model="gpt-4o-mini"), tools=[add], middleware=[TaleBudgetMiddleware()])
        state = agent.invoke({"messages": [HumanMessage("What is 17 + 25? Use the tool.")]})
        state["tale_budgets"]  # one record per model call
        ```
    """

    state_schema = TaleAgentState

    def __init__(
        self,
        estimator: Any = None,
        *,
        budget: int | None = None,
        policy: BudgetPolicy | None = None,
        format: QuestionFormat | str = QuestionFormat.CHAT,
        hard_cap: bool = False,
        answer_reserve: int = 64,
        on_estimator_error: Literal["raise", "fallback"] = "raise",
        estimation_prompt: EstimationPrompt | str = EstimationPrompt.SCRIPTS,
        estimator_max_tokens: int = 64,
        thinking: Any = None,
        thinking_policy: ThinkingPolicy | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("budget", budget, optional=True)
        check_positive_int("answer_reserve", answer_reserve)
        check_positive_int("estimator_max_tokens", estimator_max_tokens)
        if on_estimator_error not in ("raise", "fallback"):
            raise ValueError(f"on_estimator_error must be 'raise' or 'fallback', got {on_estimator_error!r}")
        if policy is not None and not isinstance(policy, BudgetPolicy):
            raise TypeError(f"policy must be a BudgetPolicy, got {type(policy).__name__}")
        self.budget = budget
        self.policy = policy or BudgetPolicy()
        self.format = QuestionFormat(format)
        self.hard_cap = hard_cap
        self.answer_reserve = answer_reserve
        self.on_estimator_error = on_estimator_error
        self.estimation_prompt = EstimationPrompt(estimation_prompt)
        self.estimator_max_tokens = estimator_max_tokens
        if thinking_policy is not None and not isinstance(thinking_policy, ThinkingPolicy):
            raise TypeError(f"thinking_policy must be a ThinkingPolicy, got {type(thinking_policy).__name__}")
        if thinking is not None and not isinstance(thinking, (bool, str, ThinkingModel)):
            raise TypeError(f"thinking must be None, a bool, an engine name or a ThinkingModel, got "
                            f"{type(thinking).__name__}")
        self.thinking = thinking
        self.thinking_policy = thinking_policy or ThinkingPolicy()
        if is_zero_shot(estimator):
            estimator = None  # the default: zero-shot on the agent's own model
        self._estimator = None if estimator is None else as_estimator(
            estimator, None, prompt=self.estimation_prompt, max_tokens=estimator_max_tokens
        )

    # -- decisions (no I/O) -----------------------------------------------------------------------

    def _turn(self, request: ModelRequest) -> _Turn | None:
        """The human turn this call belongs to, or None when the request is passed through."""
        if _forces_tool_call(request.tool_choice):
            return None  # this call writes a tool call's arguments: no budget applies to it
        messages = request.messages
        index = last_human_index(messages)
        if index is None:
            return None
        human = messages[index]
        question = str(human.text)
        if not question.strip():
            return None
        key = human.id or "sha256:" + hashlib.sha256(question.encode()).hexdigest()[:16]
        records = (request.state or {}).get("tale_budgets") or []
        cached = next((r for r in reversed(records) if r.get("message_id") == key), None)
        looping = any(isinstance(m, ToolMessage) or (isinstance(m, AIMessage) and m.tool_calls)
                      for m in messages[index + 1:])
        if cached is None and looping:
            return None  # never estimate in the middle of a tool loop
        return _Turn(index, key, question, cached)

    def _needs_estimate(self, turn: _Turn) -> bool:
        return turn.cached is None and self.budget is None

    def _estimator_for(self, request: ModelRequest) -> BudgetEstimator:
        return self._estimator or as_estimator(
            None, request.model, prompt=self.estimation_prompt, max_tokens=self.estimator_max_tokens
        )

    @staticmethod
    def _estimate_config() -> RunnableConfig:
        config = ensure_config()  # the model node's config: the estimator call becomes its child run
        return {**config, "tags": [*(config.get("tags") or []), ESTIMATE_TAG, NOSTREAM_TAG]}

    def _failed(self, name: str, exc: Exception) -> list[Estimate]:
        return estimator_failure(name, exc, self.on_estimator_error)

    def _apply(
        self, request: ModelRequest, turn: _Turn, estimator: str | None, estimates: list[Estimate] | None
    ) -> tuple[ModelRequest, dict[str, Any]]:
        """The rewritten request and this call's record."""
        own = model_max_tokens(request.model)
        setting = request.model_settings.get("max_tokens")
        limits = [v for v in (own, setting) if isinstance(v, int) and not isinstance(v, bool)]
        limit = min(limits) if limits else None
        estimate = None
        if turn.cached is not None:
            decided = BudgetRecord(budget=budget_of(turn.cached), estimator=turn.cached.get("estimator"),
                                   estimator_reply=turn.cached.get("estimator_reply"),
                                   estimator_error=turn.cached.get("estimator_error"))
        else:
            if self.budget is None:
                if not isinstance(estimates, list) or len(estimates) != 1:
                    raise EstimatorError(f"the budget estimator {estimator!r} returned {estimates!r} for one question")
                estimate = estimates[0]
            budget = decide_budget(self.policy, estimate=estimate, estimator=estimator, fixed=self.budget, limit=limit)
            decided = BudgetRecord.of(budget, estimator, estimate) if estimate is not None else \
                BudgetRecord(budget=budget, estimator=estimator)
        tools = bool(request.tools)  # this call may write a tool call: no cap that could cut its arguments
        tokens = None if decided.budget is None else decided.budget.tokens
        target = thinking_target(request.model, self.thinking) if tokens is not None else None
        knob = None if target is None else target.knob(decided.budget, self.thinking_policy, cap=not tools,
                                                        limit=min(limits) if limits else None)
        record = dataclasses.replace(decided, thinking=knob).to_dict(usage=to_usage_metadata)
        settings = dict(request.model_settings)
        cap, skipped, in_prompt = None, None, tokens
        if knob is not None and knob.applied:  # the knob carries the budget; the question goes as it is
            settings.update(target.call_kwargs(knob, settings))
            cap, in_prompt = knob.max_tokens, None
            if tools:
                skipped = "the request carries tools: a cap could cut a tool call's arguments"
        elif self.hard_cap and tokens is not None and accepts_max_tokens(request.model) and not thinks(request.model):
            if tools:
                skipped = "the request carries tools: a cap could cut a tool call's arguments"
            else:
                cap = min([tokens + self.answer_reserve, *limits])
                settings["max_tokens"] = cap
        record.update(message_id=turn.key, estimated=estimate is not None, max_tokens=cap, cap_skipped=skipped)
        overrides: dict[str, Any] = {
            "messages": budgeted_messages(request.messages, turn.index, turn.question, in_prompt, format=self.format)
        }
        if settings != request.model_settings:
            overrides["model_settings"] = settings
        return request.override(**overrides), record

    @staticmethod
    def _record(response: ModelResponse, record: dict[str, Any]) -> ExtendedModelResponse:
        reply = next((m for m in reversed(response.result) if isinstance(m, AIMessage)), None)
        record["usage"] = None if reply is None else reply.usage_metadata
        return ExtendedModelResponse(model_response=response, command=Command(update={"tale_budgets": [record]}))

    # -- the hooks: one flow (`core.flows`), answered by the sync or the async handler -------------

    def _flow(self, request: ModelRequest) -> PyGenerator[Any, Any, ModelResponse | ExtendedModelResponse]:
        """Yields an `_EstimateTurn` (answered with estimates) and then the request to send (answered
        with the handler's response); returns what the hook returns."""
        turn = self._turn(request)
        if turn is None:
            return (yield request)
        estimates, name = None, None
        if self._needs_estimate(turn):
            estimator = self._estimator_for(request)
            name = estimator.name
            try:
                estimates = yield _EstimateTurn(estimator, turn.question)
            except Exception as exc:
                estimates = self._failed(name, exc)
        new_request, record = self._apply(request, turn, name, estimates)
        return self._record((yield new_request), record)

    def wrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]
    ) -> ModelResponse | ExtendedModelResponse:
        """Budget this model call (estimating once per human turn); see the module docstring."""

        def answer(step: _EstimateTurn | ModelRequest) -> Any:
            if isinstance(step, _EstimateTurn):
                with call_configs([self._estimate_config()]):
                    return step.estimator.estimate([step.question])
            return handler(step)

        return drive(self._flow(request), answer)

    async def awrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], Awaitable[ModelResponse]]
    ) -> ModelResponse | ExtendedModelResponse:
        """Async twin of `wrap_model_call`."""

        async def answer(step: _EstimateTurn | ModelRequest) -> Any:
            if isinstance(step, _EstimateTurn):
                with call_configs([self._estimate_config()]):
                    return await step.estimator.aestimate([step.question])
            return await handler(step)

        return await adrive(self._flow(request), answer)
