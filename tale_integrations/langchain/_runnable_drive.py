"""How `TaleRunnable` runs its flow: the model calls it asks for (batched, one group per hard
cap), driven synchronously, asynchronously, or as a stream of chunks (a mixin of `TaleRunnable`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from collections.abc import Generator as PyGenerator
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import get_executor_for_config

from ..core.estimators import Estimate
from ._adapters import call_configs
from ._runnable_parts import OUTCOME_KEYS, REPAIR_SEPARATOR, Children, EstimateRequest, ModelCall, as_chunk, to_message

__all__ = ["FlowDrivers"]


class FlowDrivers:
    """The sync, async and streaming runners of `TaleRunnable._flow` (it reads ``model``,
    ``_estimator``, ``_item``, ``_flow`` and ``_one`` from the runnable)."""

    def _kwargs(self, cap: int | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        if cap is None:
            return kwargs
        own = kwargs.get("max_tokens")
        return {**kwargs, "max_tokens": min(cap, own) if isinstance(own, int) else cap}

    @staticmethod
    def _groups(call: ModelCall) -> list[list[int]]:
        groups: dict[int | None, list[int]] = {}
        for i, cap in enumerate(call.caps):
            groups.setdefault(cap, []).append(i)
        return list(groups.values())

    def _estimate(self, request: EstimateRequest) -> list[Estimate]:
        with call_configs(request.configs):
            return self._estimator.estimate(request.questions)

    async def _aestimate(self, request: EstimateRequest) -> list[Estimate]:
        with call_configs(request.configs):
            return await self._estimator.aestimate(request.questions)

    def _call(self, call: ModelCall, kwargs: dict[str, Any]) -> list[Any]:
        out: list[Any] = [None] * len(call.messages)

        def run(group: list[int]) -> None:
            replies = self.model.batch([call.messages[i] for i in group], [call.configs[i] for i in group],
                                       return_exceptions=True, **self._kwargs(call.caps[group[0]], kwargs))
            for i, reply in zip(group, replies):
                out[i] = reply

        groups = self._groups(call)
        if len(groups) == 1:
            run(groups[0])
        else:
            with get_executor_for_config(call.configs[0]) as executor:
                list(executor.map(run, groups))
        return out

    async def _acall(self, call: ModelCall, kwargs: dict[str, Any]) -> list[Any]:
        out: list[Any] = [None] * len(call.messages)

        async def run(group: list[int]) -> None:
            replies = await self.model.abatch([call.messages[i] for i in group], [call.configs[i] for i in group],
                                              return_exceptions=True, **self._kwargs(call.caps[group[0]], kwargs))
            for i, reply in zip(group, replies):
                out[i] = reply

        await asyncio.gather(*(run(g) for g in self._groups(call)))
        return out

    def _drive(self, flow: PyGenerator[Any, Any, list[Any]], kwargs: dict[str, Any]) -> list[Any]:
        request = next(flow)
        while True:
            try:
                if isinstance(request, EstimateRequest):
                    try:
                        reply: Any = self._estimate(request)
                    except Exception as exc:
                        request = flow.throw(exc)
                        continue
                else:
                    reply = self._call(request, kwargs)
                request = flow.send(reply)
            except StopIteration as done:
                return done.value

    async def _adrive(self, flow: PyGenerator[Any, Any, list[Any]], kwargs: dict[str, Any]) -> list[Any]:
        request = next(flow)
        while True:
            try:
                if isinstance(request, EstimateRequest):
                    try:
                        reply: Any = await self._aestimate(request)
                    except Exception as exc:
                        request = flow.throw(exc)
                        continue
                else:
                    reply = await self._acall(request, kwargs)
                request = flow.send(reply)
            except StopIteration as done:
                return done.value

    # -- streaming: a header chunk with the budget, the answer's chunks, a closing chunk with usage ---

    def _stream(self, inputs: Iterator[Any], run_manager: Any, config: RunnableConfig,
                **kwargs: Any) -> Iterator[AIMessageChunk]:
        flow = self._flow([self._item(next(inputs))], [Children(config, run_manager)])
        request = next(flow)
        while True:
            try:
                if isinstance(request, EstimateRequest):
                    try:
                        reply: Any = self._estimate(request)
                    except Exception as exc:
                        request = flow.throw(exc)
                        continue
                else:
                    yield self._opening(request)
                    final = None
                    for chunk in self.model.stream(request.messages[0], request.configs[0],
                                                   **self._kwargs(request.caps[0], kwargs)):
                        chunk = as_chunk(chunk)
                        yield chunk
                        final = chunk if final is None else final + chunk
                    reply = [to_message(final)]
                request = flow.send(reply)
            except StopIteration as done:
                yield self._closing(self._one(done.value))
                return

    async def _astream(self, inputs: AsyncIterator[Any], run_manager: Any, config: RunnableConfig,
                       **kwargs: Any) -> AsyncIterator[AIMessageChunk]:
        flow = self._flow([self._item(await anext(inputs))], [Children(config, run_manager)])
        request = next(flow)
        while True:
            try:
                if isinstance(request, EstimateRequest):
                    try:
                        reply: Any = await self._aestimate(request)
                    except Exception as exc:
                        request = flow.throw(exc)
                        continue
                else:
                    yield self._opening(request)
                    final = None
                    async for chunk in self.model.astream(request.messages[0], request.configs[0],
                                                          **self._kwargs(request.caps[0], kwargs)):
                        chunk = as_chunk(chunk)
                        yield chunk
                        final = chunk if final is None else final + chunk
                    reply = [to_message(final)]
                request = flow.send(reply)
            except StopIteration as done:
                yield self._closing(self._one(done.value))
                return

    @staticmethod
    def _opening(request: ModelCall) -> AIMessageChunk:
        if request.kind == "answer":  # the budget, before the first answer token
            return AIMessageChunk(content="", response_metadata={"tale": request.headers[0]})
        return AIMessageChunk(content=REPAIR_SEPARATOR)

    @staticmethod
    def _closing(result: AIMessage) -> AIMessageChunk:
        tale = result.response_metadata["tale"]  # the header went out first; send the rest
        return AIMessageChunk(content="", response_metadata={"tale": {k: v for k, v in tale.items() if k in OUTCOME_KEYS}})
