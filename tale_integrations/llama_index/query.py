"""TALE in LlamaIndex query engines: retrieve with the user's question, answer under a token budget.

- `TaleQueryTransform` (a ``BaseQueryTransform``, in ``transform.py``) estimates the budget and returns a `QueryBundle`
  whose ``query_str`` carries the budgeted chain-of-thought trigger while ``custom_embedding_strs``
  keep the original question, so vector retrieval is not polluted. Use it in a
  ``TransformQueryEngine``; note that node postprocessors, rerankers and keyword retrievers read
  ``query_str`` and therefore see the budget text there.
- `TaleQueryEngine` wraps a query engine (or builds one from a retriever with `from_args`) and is
  the precise form: retrieval and postprocessing see only the raw question; only the synthesis
  prompts (the QA, refine and summary templates of every response mode, through their
  ``{query_str}``) carry the budget. ``response.metadata["tale"]`` holds the budget, the estimator
  and the usage of every call (`TaleRun.to_dict`).

Query pipelines (``QueryPipeline``) no longer exist in llama-index-core 0.14 (workflows replaced
them); a workflow step can call `TaleQueryTransform.run` / `arun` or a `TaleQueryEngine` directly.
"""

from __future__ import annotations

import asyncio
from typing import Any

from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.base.response.schema import AsyncStreamingResponse, StreamingResponse
from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.prompts import PromptTemplate
from llama_index.core.prompts.mixin import PromptDictType, PromptMixinType
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.response_synthesizers.context_only import ContextOnly
from llama_index.core.response_synthesizers.no_text import NoText
from llama_index.core.schema import NodeWithScore, QueryBundle

from ..core.budget import BudgetPolicy
from ..core.estimators import is_zero_shot
from ._adapters import update_prompts_nested
from .events import CallRecorder, TaleRun, finish_astream, finish_stream
from .transform import TALE_QUERY_TMPL, TaleQueryTransform, question_of

__all__ = ["TALE_QUERY_TMPL", "TaleQueryEngine", "TaleQueryTransform"]

dispatcher = get_dispatcher(__name__)

_ON_EMPTY = ("respond", "raise")


def _overrides(engine: BaseQueryEngine, name: str) -> bool:
    return getattr(type(engine), name, None) is not getattr(BaseQueryEngine, name)


class TaleQueryEngine(BaseQueryEngine):
    """A query engine that retrieves with the raw question and answers under a TALE budget.

    With an engine that can retrieve and synthesize separately (``RetrieverQueryEngine``, what
    ``index.as_query_engine()`` returns), the retriever and node postprocessors see only the raw
    question, and the synthesizer gets the budgeted query in every template of every response mode.
    Any other engine gets a `QueryBundle` whose ``query_str`` carries the budget and whose embedding
    strings are the raw question (as with `TaleQueryTransform`).

    ``response.metadata["tale"]`` holds `TaleRun.to_dict`: the budget, the estimator, its reply and
    the usage of every call (the estimator's, and each synthesis call's as the LLM reported it). For
    streamed responses the answer calls are filled in, and ``complete`` set, when the stream ends.

    Edge cases: an empty query raises ValueError before anything runs. When retrieval finds nothing
    (or the response mode is ``no_text``/``context_only``) no budget is estimated and the inner
    engine's own response is returned with ``skipped`` saying why, unless
    ``on_empty_retrieval="raise"``. In the refine, tree_summarize and accumulate modes each
    synthesis call is asked to stay under the budget.

    Args:
        query_engine: The engine to wrap.
        estimator: As in `TaleQueryTransform`; default the synthesizer's own LLM (the paper's
            self-estimation), else ``Settings.llm``.
        policy, query_template, on_estimator_error: As in `TaleQueryTransform`.
        on_empty_retrieval: ``"respond"`` (default) or ``"raise"`` (ValueError) when nothing is retrieved.
        transform: A ready `TaleQueryTransform` instead of the four settings above.
        callback_manager: Default the wrapped engine's.
    """

    def __init__(
        self,
        query_engine: BaseQueryEngine,
        estimator: Any = None,
        *,
        policy: BudgetPolicy | None = None,
        query_template: PromptTemplate | None = None,
        on_estimator_error: str = "raise",
        on_empty_retrieval: str = "respond",
        transform: TaleQueryTransform | None = None,
        callback_manager: CallbackManager | None = None,
    ) -> None:
        if not isinstance(query_engine, BaseQueryEngine):
            raise TypeError(f"query_engine must be a LlamaIndex query engine, got {type(query_engine).__name__}")
        if on_empty_retrieval not in _ON_EMPTY:
            raise ValueError(f"on_empty_retrieval must be one of {list(_ON_EMPTY)}, got {on_empty_retrieval!r}")
        if transform is not None:
            if not isinstance(transform, TaleQueryTransform):
                raise TypeError(f"transform must be a TaleQueryTransform, got {type(transform).__name__}")
            if any(x is not None for x in (estimator, policy, query_template)) or on_estimator_error != "raise":
                raise ValueError("pass either transform= or its settings (estimator, policy, query_template, "
                                 "on_estimator_error), not both")
        else:
            if estimator is None or is_zero_shot(estimator):
                # RetrieverQueryEngine has no public accessor for its synthesizer's LLM (0.14).
                estimator = getattr(getattr(query_engine, "_response_synthesizer", None), "_llm", None)
            transform = TaleQueryTransform(estimator, policy=policy, query_template=query_template,
                                           on_estimator_error=on_estimator_error)
        self._inner = query_engine
        self._transform = transform
        self._on_empty = on_empty_retrieval
        self._split = _overrides(query_engine, "retrieve") and _overrides(query_engine, "synthesize")
        super().__init__(callback_manager or query_engine.callback_manager)

    @classmethod
    def from_args(cls, retriever: Any, estimator: Any = None, *, policy: BudgetPolicy | None = None,
                  query_template: PromptTemplate | None = None, on_estimator_error: str = "raise",
                  on_empty_retrieval: str = "respond", **engine_kwargs: Any) -> TaleQueryEngine:
        """Build over a retriever: ``engine_kwargs`` go to ``RetrieverQueryEngine.from_args`` (``llm``,
        ``response_mode``, ``streaming``, ``node_postprocessors``, templates...)."""
        inner = RetrieverQueryEngine.from_args(retriever, **engine_kwargs)
        return cls(inner, estimator, policy=policy, query_template=query_template,
                   on_estimator_error=on_estimator_error, on_empty_retrieval=on_empty_retrieval)

    @property
    def query_engine(self) -> BaseQueryEngine:
        """The wrapped engine."""
        return self._inner

    @property
    def transform(self) -> TaleQueryTransform:
        """The `TaleQueryTransform` that estimates and renders the budget."""
        return self._transform

    def _get_prompt_modules(self) -> PromptMixinType:
        return {"query_engine": self._inner, "tale": self._transform}

    def update_prompts(self, prompts_dict: PromptDictType) -> None:
        """Update prompts by the keys of ``get_prompts`` (nested keys of any depth work)."""
        update_prompts_nested(self, prompts_dict)

    # -- retrieve, then synthesize under the budget ------------------------------------------------

    def retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        """The wrapped engine's retrieval, with the raw question."""
        return self._inner.retrieve(query_bundle)

    def _skip(self, query_bundle: QueryBundle, nodes: list[NodeWithScore]) -> TaleRun | None:
        """The record of a question that needs no budget (no answer will be written), else None."""
        question, skipped = question_of(query_bundle), None
        if not nodes:
            if self._on_empty == "raise":
                raise ValueError(f"nothing was retrieved for the query {question!r}; pass "
                                 "on_empty_retrieval='respond' to get the engine's empty response instead")
            skipped = "no nodes retrieved"
        elif isinstance(getattr(self._inner, "_response_synthesizer", None), (NoText, ContextOnly)):
            skipped = "the response mode writes no answer"
        return TaleRun(question=question, budget=None, skipped=skipped) if skipped else None

    def synthesize(self, query_bundle: QueryBundle, nodes: list[NodeWithScore],
                   additional_source_nodes: Any = None) -> Any:
        """Estimate the budget and synthesize with it (the wrapped engine's synthesizer)."""
        run = self._skip(query_bundle, nodes) or self._transform.estimate(
            query_bundle.query_str, callback_manager=self.callback_manager)
        target = query_bundle if run.skipped else self._transform.apply(query_bundle, run.budget)
        recorder = CallRecorder()
        with recorder.recording():
            response = self._inner.synthesize(target, nodes, additional_source_nodes=additional_source_nodes)
        return self._finish(response, run, recorder)

    async def asynthesize(self, query_bundle: QueryBundle, nodes: list[NodeWithScore],
                          additional_source_nodes: Any = None) -> Any:
        """Async twin of `synthesize`."""
        run = self._skip(query_bundle, nodes) or await self._transform.aestimate(
            query_bundle.query_str, callback_manager=self.callback_manager)
        target = query_bundle if run.skipped else self._transform.apply(query_bundle, run.budget)
        recorder = CallRecorder()
        with recorder.recording():
            if _overrides(self._inner, "asynthesize"):
                response = await self._inner.asynthesize(target, nodes,
                                                         additional_source_nodes=additional_source_nodes)
            else:
                response = await asyncio.to_thread(self._inner.synthesize, target, nodes,
                                                   additional_source_nodes=additional_source_nodes)
        return self._finish(response, run, recorder)

    def _query(self, query_bundle: QueryBundle) -> Any:
        question = question_of(query_bundle)
        with self.callback_manager.event(CBEventType.QUERY, payload={EventPayload.QUERY_STR: question}) as event:
            if self._split:
                response = self.synthesize(query_bundle, self.retrieve(query_bundle))
            else:
                run = self._transform.estimate(question, callback_manager=self.callback_manager)
                recorder = CallRecorder()
                with recorder.recording():
                    response = self._inner.query(self._transform.apply(query_bundle, run.budget))
                response = self._finish(response, run, recorder)
            event.on_end(payload={EventPayload.RESPONSE: response})
        return response

    async def _aquery(self, query_bundle: QueryBundle) -> Any:
        question = question_of(query_bundle)
        with self.callback_manager.event(CBEventType.QUERY, payload={EventPayload.QUERY_STR: question}) as event:
            if self._split:
                aretrieve = getattr(self._inner, "aretrieve", None)
                nodes = await aretrieve(query_bundle) if callable(aretrieve) else \
                    await asyncio.to_thread(self._inner.retrieve, query_bundle)
                response = await self.asynthesize(query_bundle, nodes)
            else:
                run = await self._transform.aestimate(question, callback_manager=self.callback_manager)
                recorder = CallRecorder()
                with recorder.recording():
                    response = await self._inner.aquery(self._transform.apply(query_bundle, run.budget))
                response = self._finish(response, run, recorder)
            event.on_end(payload={EventPayload.RESPONSE: response})
        return response

    # -- metadata, and streams that finish it ------------------------------------------------------

    def _finish(self, response: Any, run: TaleRun, recorder: CallRecorder) -> Any:
        streaming = isinstance(response, (StreamingResponse, AsyncStreamingResponse))
        current = run.with_answer_calls(recorder.calls(), complete=not streaming)
        record = current.to_dict()
        response.metadata = {**(response.metadata or {}), "tale": record}
        if isinstance(response, StreamingResponse) and response.response_gen is not None:
            response.response_gen = finish_stream(response.response_gen, run, recorder, record)
        elif isinstance(response, AsyncStreamingResponse) and response.response_gen is not None:
            response.response_gen = finish_astream(response.response_gen, run, recorder, record)
        else:
            if streaming:  # a stream with nothing to consume is complete now
                record.update(complete=True)
            dispatcher.event(current.event())
        return response

