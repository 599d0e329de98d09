"""`TaleQueryTransform`: a LlamaIndex query transform that estimates a token budget and writes it
into the query.

It returns a `QueryBundle` whose ``query_str`` carries the budgeted chain-of-thought trigger while
``custom_embedding_strs`` keep the original question, so vector retrieval is not polluted. Use it in a
``TransformQueryEngine``; node postprocessors, rerankers and keyword retrievers read ``query_str`` and
therefore see the budget text there. `TaleQueryEngine` (``query.py``) is the precise form.
"""

from __future__ import annotations

from typing import Any

from llama_index.core.callbacks import CallbackManager
from llama_index.core.indices.query.query_transform.base import BaseQueryTransform
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.prompts import PromptTemplate
from llama_index.core.prompts.mixin import PromptDictType
from llama_index.core.schema import QueryBundle
from llama_index.core.settings import Settings

from ..core.budget import Budget, BudgetPolicy
from ..core.decision import decide_budget, estimator_failure
from ..core.estimators import Estimate, EstimatorError, is_zero_shot
from ..core.prompts import TALE_QUERY_TEMPLATE, cot_trigger
from ._adapters import LlamaIndexEstimator, LlamaIndexGenerator, as_estimator, check_template, to_chat_messages
from .events import TaleBudgetEvent, TaleCall, TaleRun, report_llm_call

__all__ = ["TALE_QUERY_TMPL", "TaleQueryTransform"]

dispatcher = get_dispatcher(__name__)

TALE_QUERY_TMPL = TALE_QUERY_TEMPLATE  # the template text lives in core/prompts.py

_ON_ERROR = ("raise", "fallback")


def question_of(query: Any) -> str:
    question = query.query_str if isinstance(query, QueryBundle) else query
    if not isinstance(question, str):
        raise TypeError(f"the query must be a str or a QueryBundle, got {type(query).__name__}")
    if not question.strip():
        raise ValueError("the query is empty; pass the text of the question to answer")
    return question


def _default_llm() -> Any:
    try:
        return Settings.llm
    except (ImportError, ValueError) as exc:
        raise ValueError(
            "TALE needs a budget estimator: pass estimator= (a LlamaIndex LLM, a core estimator, an int or a "
            "function) or llm=, or set Settings.llm"
        ) from exc


class TaleQueryTransform(BaseQueryTransform):
    """Estimate a question's budget and put it into ``query_str``, keeping the embedding strings raw.

    ``run(query, metadata={"budget": N})`` uses N for that call instead of estimating.

    Args:
        estimator: A LlamaIndex LLM (the paper's zero-shot estimator on it), a core
            `BudgetEstimator` or `Generator`, an int (one budget for all), a function
            ``question -> int | None``, or a name: ``"learned"`` (the shipped learned estimator: no
            model call, zero tokens), ``"learned:PATH"``, ``"zero-shot"`` (on ``llm``, else
            ``Settings.llm``). Default: ``"zero-shot"``.
        llm: The LLM to estimate with when no ``estimator`` is given.
        policy: `BudgetPolicy` (floor, cap, scale α, parse-failure fallback). Default ``BudgetPolicy()``.
        query_template: The budgeted query; variables ``{query_str}`` (required), ``{cot_trigger}``
            (the paper's budgeted trigger, or the vanilla one when the policy falls back to no
            budget) and ``{budget}`` (empty without a budget). Default `TALE_QUERY_TMPL`.
        on_estimator_error: ``"raise"`` (default: `EstimatorError` naming the estimator) or
            ``"fallback"`` (the policy's parse-failure rule; the budget says ``"estimator failed"``).
        callback_manager: Where an estimator that is not a LlamaIndex LLM reports its call (so
            ``TokenCountingHandler`` counts it); default ``Settings.callback_manager``.

    Raises:
        ValueError: the query is empty, or a setting is invalid.
        EstimatorError: the estimator failed and ``on_estimator_error="raise"``.
    """

    def __init__(
        self,
        estimator: Any = None,
        *,
        llm: Any = None,
        policy: BudgetPolicy | None = None,
        query_template: PromptTemplate | None = None,
        on_estimator_error: str = "raise",
        callback_manager: CallbackManager | None = None,
    ) -> None:
        if is_zero_shot(estimator):
            estimator = None
        if estimator is not None and llm is not None:
            raise ValueError("pass estimator= or llm=, not both (llm is the estimator's model when none is given)")
        if policy is not None and not isinstance(policy, BudgetPolicy):
            raise TypeError(f"policy must be a BudgetPolicy, got {type(policy).__name__}")
        if on_estimator_error not in _ON_ERROR:
            raise ValueError(f"on_estimator_error must be one of {list(_ON_ERROR)}, got {on_estimator_error!r}")
        self._estimator = as_estimator(estimator if estimator is not None else llm if llm is not None
                                       else _default_llm())
        self._policy = policy if policy is not None else BudgetPolicy()
        self._query_template = query_template if query_template is not None else PromptTemplate(TALE_QUERY_TMPL)
        check_template(self._query_template, required=("query_str",), name="query_template")
        self._on_estimator_error = on_estimator_error
        self.callback_manager = callback_manager

    @property
    def estimator(self) -> Any:
        """The core `BudgetEstimator`."""
        return self._estimator

    @property
    def policy(self) -> BudgetPolicy:
        """The `BudgetPolicy`."""
        return self._policy

    # -- prompts ---------------------------------------------------------------------------------

    def _get_prompts(self) -> PromptDictType:
        prompts: PromptDictType = {"query_template": self._query_template}
        if isinstance(self._estimator, LlamaIndexEstimator):
            prompts["estimation_prompt"] = self._estimator.prompt_template
        return prompts

    def _update_prompts(self, prompts: PromptDictType) -> None:
        if "query_template" in prompts:
            check_template(prompts["query_template"], required=("query_str",), name="query_template")
            self._query_template = prompts["query_template"]
        if "estimation_prompt" in prompts:
            if not isinstance(self._estimator, LlamaIndexEstimator):
                raise ValueError(f"the estimator {self._estimator.name!r} has no estimation prompt to update")
            check_template(prompts["estimation_prompt"], required=("question",), name="the estimation prompt")
            self._estimator.prompt_template = prompts["estimation_prompt"]

    # -- the budget ------------------------------------------------------------------------------

    def render(self, question: str, budget: Budget | None) -> str:
        """The budgeted query for ``question`` (``budget`` None or without tokens: the vanilla trigger)."""
        tokens = None if budget is None else budget.tokens
        return self._query_template.format(query_str=question_of(question), cot_trigger=cot_trigger(tokens),
                                           budget="" if tokens is None else tokens)

    def apply(self, query_bundle: QueryBundle, budget: Budget | None) -> QueryBundle:
        """``query_bundle`` with the budgeted ``query_str``; embedding strings, embedding and image kept."""
        return QueryBundle(query_str=self.render(query_bundle.query_str, budget),
                           custom_embedding_strs=list(query_bundle.embedding_strs),
                           embedding=query_bundle.embedding, image_path=query_bundle.image_path)

    @dispatcher.span
    def estimate(self, question: str, *, budget: int | None = None,
                 callback_manager: CallbackManager | None = None) -> TaleRun:
        """Resolve the budget for ``question``: ``budget`` when given (the caller's), else estimated.

        Dispatches a `TaleBudgetEvent`. Returns a `TaleRun` holding the budget and the estimator call.
        """
        question = question_of(question)
        if budget is not None:
            return self._decided(question, decide_budget(self._policy, caller=budget), None, callback_manager)
        try:
            estimates = self._estimator.estimate([question])
        except Exception as exc:  # the estimator's own failure, not a bug here
            return self._failed(question, exc, callback_manager)
        return self._estimated(question, estimates, callback_manager)

    @dispatcher.span
    async def aestimate(self, question: str, *, budget: int | None = None,
                        callback_manager: CallbackManager | None = None) -> TaleRun:
        """Async twin of `estimate`."""
        question = question_of(question)
        if budget is not None:
            return self._decided(question, decide_budget(self._policy, caller=budget), None, callback_manager)
        try:
            estimates = await self._estimator.aestimate([question])
        except Exception as exc:
            return self._failed(question, exc, callback_manager)
        return self._estimated(question, estimates, callback_manager)

    def _failed(self, question: str, exc: Exception, callback_manager: CallbackManager | None) -> TaleRun:
        name = self._estimator.name
        [failed] = estimator_failure(name, exc, self._on_estimator_error)
        return self._decided(question, decide_budget(self._policy, estimate=failed, estimator=name), None,
                             callback_manager, error=failed.error)

    def _estimated(self, question: str, estimates: Any, callback_manager: CallbackManager | None) -> TaleRun:
        if not isinstance(estimates, list) or len(estimates) != 1 or not isinstance(estimates[0], Estimate):
            got = len(estimates) if isinstance(estimates, list) else type(estimates).__name__
            raise EstimatorError(f"the budget estimator {self._estimator.name!r} returned {got} estimates for 1 "
                                 "question (expected a list with one Estimate)")
        [est] = estimates
        return self._decided(question, decide_budget(self._policy, estimate=est, estimator=self._estimator.name),
                             est, callback_manager)

    def _decided(self, question: str, budget: Budget, est: Estimate | None,
                 callback_manager: CallbackManager | None, error: str | None = None) -> TaleRun:
        generator = getattr(self._estimator, "generator", None)
        calls: tuple[TaleCall, ...] = ()
        reply = None
        if est is not None and generator is not None:  # a model was asked
            reply = est.reply
            calls = (TaleCall(role="estimator", model=getattr(generator, "model_name", None), usage=est.usage),)
            if not isinstance(generator, LlamaIndexGenerator) and est.usage.counter != "none":
                self._report(question, est, callback_manager)
        estimator = None if budget.source == "caller" else self._estimator.name
        run = TaleRun(question=question, budget=budget, estimator=estimator, estimator_reply=reply,
                      estimator_error=error if est is None else est.error, calls=calls)
        dispatcher.event(TaleBudgetEvent(query_str=question, **run.record.to_dict()))
        return run

    def _report(self, question: str, est: Estimate, callback_manager: CallbackManager | None) -> None:
        """Report a core estimator's model call as an LLM callback event, so ``TokenCountingHandler``
        counts it (a LlamaIndex LLM estimator reports its own calls)."""
        messages = self._estimator.messages(question) if hasattr(self._estimator, "messages") else \
            [{"role": "user", "content": question}]
        report_llm_call(callback_manager or self.callback_manager or Settings.callback_manager,
                        to_chat_messages(messages), est.reply, est.usage, name=self._estimator.name)

    # -- the transform ---------------------------------------------------------------------------

    def _run(self, query_bundle: QueryBundle, metadata: dict) -> QueryBundle:
        run = self.estimate(query_bundle.query_str, budget=(metadata or {}).get("budget"))
        return self.apply(query_bundle, run.budget)

    async def arun(self, query_bundle_or_str: QueryBundle | str, metadata: dict | None = None) -> QueryBundle:
        """Async twin of ``run`` (``BaseQueryTransform`` has none)."""
        bundle = QueryBundle(query_str=query_bundle_or_str, custom_embedding_strs=[query_bundle_or_str]) \
            if isinstance(query_bundle_or_str, str) else query_bundle_or_str
        run = await self.aestimate(bundle.query_str, budget=(metadata or {}).get("budget"))
        return self.apply(bundle, run.budget)
