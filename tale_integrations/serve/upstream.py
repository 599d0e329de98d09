"""``create_upstream_app``: ``tale serve --upstream URL``, a TALE front for any OpenAI-compatible engine.

The front serves the same routes as the local server (``POST /v1/chat/completions``,
``POST /v1/completions``, ``GET /v1/models``, ``GET /v1/models/{id}``, ``GET /health``) and forwards
each request to the engine behind it (vLLM, SGLang, llama.cpp's server, OpenAI, another ``tale serve``):

- **Without** ``tale_budget`` a request passes through unchanged: same body, same model name (the
  engine's served names are the front's; ``/v1/models`` is the engine's list), same answer, streamed
  chunk by chunk when ``stream`` is true. The engine checks it (tools, ``n``, ``logprobs``... are its
  business).
- **With** ``tale_budget`` (an int or ``"auto"``) the TALE fields are checked by `serve.params` as
  on the local server, the budget is planned by `serve.tale.plan_budget` (the same rewrite of the
  last user message; ``"auto"`` asks the engine's model with the paper's zero-shot prompt, or uses
  the estimator the front was started with), and the output cap is set to ``budget + answer_reserve``
  unless the client's own cap is lower (the answer of a model that keeps to its budget is never cut).
  The TALE fields are removed before forwarding. ``tale_enforce`` is refused (422): decode-time
  enforcement is a logits rule of the local backend that an engine does not run.
- **Usage** is the engine's own, passed on unchanged (the answer call); the estimator's call is
  reported in the ``tale`` object (``tale.estimator_usage``), exactly as the local server does, so
  the two add up to the request's whole cost. The ``tale`` object rides on the response, or on the
  first chunk of a stream.
- **Errors**: an engine's error answer is passed on with its status and body (a body that is not
  JSON is wrapped in the OpenAI error object); an engine that cannot be reached is a 502
  (``upstream_unreachable``), one that does not answer in time a 504 (``upstream_timeout``); client
  input the front checks itself is a 4xx, as on the local server.

``docs/vllm_and_openai.md`` (section 5) shows the scale-out path this front is for.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

from .._optional import require

httpx = require("httpx", extra="serve", purpose="`tale serve --upstream`")
openai = require("openai", extra="openai", purpose="`tale serve --upstream`")
fastapi = require("fastapi", extra="serve", purpose="`tale serve --upstream`")

from fastapi import APIRouter, FastAPI, Request  # noqa: E402
from fastapi.responses import Response, StreamingResponse  # noqa: E402

from ..backends.openai import OpenAIGenerator, uses_max_completion_tokens  # noqa: E402
from ..core.budget import BudgetPolicy  # noqa: E402
from ..core.checks import check_number, check_positive_int  # noqa: E402
from ..core.errors import JobCancelled  # noqa: E402
from ..core.estimators import BudgetEstimator, ZeroShotEstimator, get_estimator, is_zero_shot  # noqa: E402
from ..core.thinking import (  # noqa: E402
    Engine,
    ThinkingModel,
    ThinkingPolicy,
    engine_named,
    resolve_thinking,
    thinking_knob,
)
from .errors import APIError, bad_request, error_body, unsupported  # noqa: E402
from .guards import (  # noqa: E402
    SafeJSONResponse,
    install_error_handlers,
    install_guards,
    read_json,
)
from .params import GenerationRequest, parse_chat, parse_completion  # noqa: E402
from .tale import TalePlan, plan_budget  # noqa: E402

__all__ = ["UPSTREAM_API_KEY_ENV", "UpstreamError", "create_upstream_app", "run_upstream", "upstream_base_url"]

logger = logging.getLogger("tale_integrations.serve")

#: Environment variable read for the engine's API key when ``--upstream-api-key`` is not given.
UPSTREAM_API_KEY_ENV = "TALE_UPSTREAM_API_KEY"

#: How often a waiting request checks whether its client is still there (seconds).
_DISCONNECT_POLL_S = 0.2

#: The request fields that make a request a TALE request (removed before forwarding).
_TALE_FIELDS = ("tale_budget", "tale_enforce")
#: The fields `serve.params` reads to check a TALE request, per endpoint (the rest pass through).
_CHECKED = {
    "chat": ("model", "messages", "max_tokens", "max_completion_tokens", "stream", "stream_options", *_TALE_FIELDS),
    "completion": ("model", "prompt", "max_tokens", "stream", "stream_options", *_TALE_FIELDS),
}
_ROUTES = {"chat": "/chat/completions", "completion": "/completions"}
#: Most characters of a non-JSON error body quoted in the error passed on.
_QUOTED_CHARS = 500


class UpstreamError(APIError):
    """The engine's own error answer, passed on with its status and body.

    Args:
        status: The engine's HTTP status.
        content: The engine's response body; JSON is passed on as it is, anything else is quoted in
            the OpenAI error object.
    """

    def __init__(self, status: int, content: bytes) -> None:
        text = content.decode("utf-8", errors="replace")
        try:
            body = json.loads(text)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            quoted = text.strip()[:_QUOTED_CHARS] or "(empty body)"
            body = error_body(f"the upstream engine answered HTTP {status}: {quoted}",
                              type="server_error" if status >= 500 else "invalid_request_error", code="upstream_error")
        error = body.get("error")
        message = error.get("message") if isinstance(error, dict) else None
        super().__init__(status, str(message or f"the upstream engine answered HTTP {status}"))
        self._body = body

    def body(self) -> dict[str, Any]:
        """The engine's body (or the error object quoting it)."""
        return self._body


def upstream_base_url(url: str) -> str:
    """The OpenAI base URL of the engine at ``url``: ``http://host:8000`` becomes
    ``http://host:8000/v1``; a URL with a path (``.../v1``, a proxy's prefix) is kept as given.

    Raises:
        ValueError: not an ``http://`` or ``https://`` URL with a host.
    """
    if not isinstance(url, str):
        raise TypeError(f"upstream_url must be a string, got {type(url).__name__}")
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"upstream_url must be an http:// or https:// URL such as http://127.0.0.1:8000/v1, "
                         f"got {url!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"upstream_url must have no query or fragment, got {url!r}")
    path = parts.path.rstrip("/")
    return f"{parts.scheme}://{parts.netloc}{path or '/v1'}"


def _merged(body: Mapping[str, Any], fields: Mapping[str, Any]) -> dict[str, Any]:
    """``body`` with a knob's ``fields`` written in (nested objects merged, not replaced)."""
    out = dict(body)
    for key, value in fields.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


@contextmanager
def _upstream_calls(timeout: float) -> Any:
    """The engine's failures as API errors: its answers with their status, no connection a 502, no
    answer in time a 504. The messages name no internal address."""
    try:
        yield
    except (httpx.TimeoutException, openai.APITimeoutError):
        raise APIError(504, f"the upstream engine did not answer within {timeout:g} s; retry, or raise the "
                            "front's timeout (`tale serve --upstream-timeout`)", type="server_error",
                       code="upstream_timeout") from None
    except openai.APIStatusError as exc:
        raise UpstreamError(exc.status_code, exc.response.content) from None
    except (httpx.TransportError, openai.APIConnectionError) as exc:
        logger.warning("upstream engine unreachable: %r", exc)
        raise APIError(502, "the upstream engine could not be reached; check that it is running and that "
                            "`tale serve --upstream URL` names it", type="server_error",
                       code="upstream_unreachable") from None


async def _unless_disconnected(request: Request, work: Awaitable[Any]) -> Any:
    """Await ``work``; if the client disconnects first, cancel it (which closes the connection to
    the engine, so the engine stops generating) and give up."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=_DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise JobCancelled("the client went away before the engine answered")
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


class _Relay(StreamingResponse):
    """A streamed answer that closes the engine's response however it ends (finished, client gone)."""

    def __init__(self, content: AsyncIterator[bytes], *, on_close: Callable[[], Awaitable[None]]) -> None:
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()  # type: ignore[attr-defined]
            await self.on_close()


def _data(body: Any) -> bytes:
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


async def _relay_events(response: Any, tale: dict[str, Any] | None) -> AsyncIterator[bytes]:
    """The engine's server-sent events, one at a time as they arrive; the ``tale`` object is added
    to the first JSON chunk. A failure mid-stream ends it with an error event (no ``[DONE]``)."""
    lines: list[str] = []
    try:
        async for line in response.aiter_lines():
            if line:
                lines.append(line)
                continue
            if not lines:
                continue
            if tale is not None:
                for i, field in enumerate(lines):
                    if field.startswith("data:") and field[5:].strip() != "[DONE]":
                        try:
                            chunk = json.loads(field[5:])
                        except ValueError:
                            break
                        if isinstance(chunk, dict) and "error" not in chunk:
                            chunk["tale"] = tale
                            lines[i] = "data: " + json.dumps(chunk, separators=(",", ":"))
                            tale = None
                        break
            yield ("\n".join(lines) + "\n\n").encode()
            lines = []
        if lines:
            yield ("\n".join(lines) + "\n\n").encode()
    except httpx.HTTPError as exc:
        logger.warning("upstream stream failed: %r", exc)
        code = "upstream_timeout" if isinstance(exc, httpx.TimeoutException) else "upstream_unreachable"
        yield _data(error_body("the upstream engine's stream broke off before it finished", type="server_error",
                               code=code))


def create_upstream_app(
    upstream_url: str,
    *,
    api_key: str | None = None,
    upstream_api_key: str | None = None,
    estimator: BudgetEstimator | str = "zero-shot",
    estimator_model: str | None = None,
    policy: BudgetPolicy | None = None,
    answer_reserve: int | None = 64,
    thinking: Engine | str | ThinkingModel | bool | None = None,
    thinking_policy: ThinkingPolicy | None = None,
    timeout: float = 600.0,
    connect_timeout: float = 10.0,
    max_body_bytes: int = 1_000_000,
    allow_origins: Iterable[str] = (),
    allowed_hosts: Iterable[str] | None = None,
) -> FastAPI:
    """An OpenAI-compatible app that adds TALE to the engine at ``upstream_url`` (see the module).

    Args:
        upstream_url: The engine's OpenAI base URL (``http://gpu-host:8000/v1``; ``/v1`` is added to
            a URL without a path).
        api_key: When set, every ``/v1`` request to the front needs ``Authorization: Bearer <api_key>``.
        upstream_api_key: Sent to the engine as ``Authorization: Bearer <upstream_api_key>``; the
            client's own header is never forwarded.
        estimator: The estimator behind ``"tale_budget": "auto"``: ``"zero-shot"`` (default: the
            paper's, asking the engine's model), ``"learned"`` (no model call), ``"learned:PATH"``,
            ``"fixed:N"`` or a core `BudgetEstimator`.
        estimator_model: The engine's model the zero-shot estimator asks (default: the request's
            model); a small model here makes estimates cheap.
        policy: Clamping rules for estimates (default `BudgetPolicy()`, as on the local server).
        answer_reserve: Output tokens beyond the budget in the cap set on TALE requests (the cap is
            ``budget + answer_reserve``, or the client's own cap when lower); None sets no cap.
            Default 64.
        thinking: Which thinking knob carries the budget (`core.thinking`): None (default: OpenAI's
            thinking models, known by name (o-series, gpt-5), get ``reasoning_effort``), False (never:
            the prompt always carries it), the engine's name (``"vllm"``, ``"sglang"``,
            ``"llamacpp"``: every chat model it serves gets that engine's knob; say so only when the
            engine is set up for it, see the rows' notes), or a `ThinkingModel` row. When a knob
            applies, the prompt is left as it is and the cap is the knob's (thinking allowance +
            ``thinking_policy.answer_reserve``); when it cannot apply, the prompt carries the budget.
        thinking_policy: The knob's numbers (`ThinkingPolicy`: answer reserve, level ceilings).
        timeout: Seconds the engine may take to answer (between two chunks of a stream). Default 600.
        connect_timeout: Seconds to open a connection to the engine. Default 10.
        max_body_bytes: Largest accepted request body. Default 1,000,000.
        allow_origins: Web origins whose requests are answered (`serve.guards`); others are refused.
        allowed_hosts: Host names the front answers to (`serve.guards.default_allowed_hosts`); None: any.
    """
    base = upstream_base_url(upstream_url)
    for name, key in (("api_key", api_key), ("upstream_api_key", upstream_api_key)):
        if key is not None and (not isinstance(key, str) or not key.strip()):
            raise ValueError(f"{name} must be a non-empty string or None")
    if estimator_model is not None and (not isinstance(estimator_model, str) or not estimator_model.strip()):
        raise ValueError(f"estimator_model must be a non-empty model name or None, got {estimator_model!r}")
    if policy is not None and not isinstance(policy, BudgetPolicy):
        raise TypeError(f"policy must be a BudgetPolicy, got {type(policy).__name__}")
    check_positive_int("answer_reserve", answer_reserve, optional=True)
    if thinking is True:
        raise ValueError("thinking=True cannot tell which engine is upstream; name it (thinking='vllm', 'sglang', "
                         "'llamacpp', 'openai'...) or pass a ThinkingModel")
    if isinstance(thinking, str):
        thinking = engine_named(thinking, alternatives="None, False or a ThinkingModel")
    elif thinking is not None and thinking is not False and not isinstance(thinking, ThinkingModel):
        raise TypeError(f"thinking must be None, False, an engine name or a ThinkingModel, got "
                        f"{type(thinking).__name__}")
    if thinking_policy is not None and not isinstance(thinking_policy, ThinkingPolicy):
        raise TypeError(f"thinking_policy must be a ThinkingPolicy, got {type(thinking_policy).__name__}")
    check_number("timeout", timeout, above=0)
    check_number("connect_timeout", connect_timeout, above=0)
    check_positive_int("max_body_bytes", max_body_bytes)
    auto_estimator = None if is_zero_shot(estimator) else get_estimator(estimator)
    timeouts = httpx.Timeout(timeout, connect=min(connect_timeout, timeout))
    headers = {"Accept": "application/json"}
    if upstream_api_key is not None:
        headers["Authorization"] = f"Bearer {upstream_api_key}"
    engines: dict[str, OpenAIGenerator] = {}  # the zero-shot estimator's model, by name

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # No connection cap of the front's own: concurrency is the engine's to schedule (vLLM queues).
        pool = httpx.Limits(max_connections=None, max_keepalive_connections=64)
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=timeouts, limits=pool) as client:
            app.state.client = client
            try:
                yield
            finally:
                for engine in engines.values():
                    await engine.async_client.close()
                    engine.client.close()
                engines.clear()

    app = FastAPI(title="tale serve --upstream", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.upstream_url = base
    install_guards(app, api_key=api_key, allow_origins=allow_origins, allowed_hosts=allowed_hosts)
    install_error_handlers(app)

    def client() -> Any:
        return app.state.client

    def estimator_for(model: str) -> BudgetEstimator:
        if auto_estimator is not None:
            return auto_estimator
        name = estimator_model or model
        if name not in engines:  # the SDK needs a key; an engine without one ignores it
            engines[name] = OpenAIGenerator(name, base_url=base, api_key=upstream_api_key or "none",
                                            timeout=timeout, max_retries=0)
        return ZeroShotEstimator(engines[name])

    async def plan(kind: str, body: dict[str, Any], req: GenerationRequest) -> tuple[TalePlan, dict[str, Any]]:
        """The TALE plan and the body to forward: the budget through a thinking knob where the model
        has one, else the budgeted prompt; and the output cap."""
        # The client's own cap; a completion without one gets the cap below, not OpenAI's 16.
        own = req.max_tokens if kind == "chat" or body.get("max_tokens") is not None else None
        with _upstream_calls(timeout):
            planned = await plan_budget(req.messages, req.tale_budget, batcher=None, limit=own,  # type: ignore[arg-type]
                                        policy=policy, estimator=estimator_for(req.model))
        tokens = planned.budget.tokens
        if tokens is None:  # the policy chose no budget: a plain request
            return planned, body
        own_fields = [f for f in ("max_tokens", "max_completion_tokens") if body.get(f) is not None]
        row = None
        if kind == "chat":  # undeclared, only OpenAI's names: their knob is a chat-completions field
            row = resolve_thinking(thinking, req.model, engine=Engine.OPENAI if thinking is None else None)
        knob = None if row is None else thinking_knob(row, planned.budget, model=req.model, policy=thinking_policy,
                                                      limit=own)
        if knob is not None and knob.applied:  # the engine holds the thinking to the budget; the prompt stays
            out = _merged(body, knob.fields)
            if knob.max_tokens is not None:
                out.update({f: knob.max_tokens for f in own_fields})
            return replace(planned, messages=req.messages, thinking=knob), out
        planned = replace(planned, thinking=knob)
        out = dict(body)
        if kind == "chat":
            messages = list(body["messages"])
            for i, (old, new) in enumerate(zip(req.messages, planned.messages, strict=True)):
                if new != old:
                    messages[i] = {**messages[i], "content": new["content"]}
            out["messages"] = messages
        else:
            out["prompt"] = planned.messages[0]["content"]
        if answer_reserve is not None:
            cap = tokens + answer_reserve if own is None else min(own, tokens + answer_reserve)
            if not own_fields:
                chat_o_series = kind == "chat" and uses_max_completion_tokens(req.model)
                own_fields = ["max_completion_tokens" if chat_o_series else "max_tokens"]
            out.update({f: cap for f in own_fields})
        return planned, out

    async def forward(request: Request, kind: str) -> Response:
        body = await read_json(request, max_body_bytes)
        if not isinstance(body, dict):
            raise bad_request("the request body must be a JSON object", code="invalid_json")
        planned = None
        if any(f in body for f in _TALE_FIELDS):
            parse = parse_chat if kind == "chat" else parse_completion
            req = parse({k: body[k] for k in _CHECKED[kind] if k in body})
            if req.tale_enforce:
                raise unsupported("tale_enforce", "tale_enforce needs the local backend's budget enforcer, which an "
                                                  "upstream engine does not run; send tale_budget alone")
            body = {k: v for k, v in body.items() if k not in _TALE_FIELDS}
            if req.tale_budget is not None:
                planned, body = await _unless_disconnected(request, plan(kind, body, req))
        tale = None if planned is None else planned.to_dict()
        upstream = client().build_request("POST", _ROUTES[kind].lstrip("/"), content=json.dumps(body).encode(),
                                          headers={"Content-Type": "application/json"})
        if body.get("stream") is True:
            with _upstream_calls(timeout):
                response = await _unless_disconnected(request, client().send(upstream, stream=True))
            if response.status_code >= 400:
                try:
                    with _upstream_calls(timeout):
                        content = await response.aread()
                finally:
                    await response.aclose()
                raise UpstreamError(response.status_code, content)
            return _Relay(_relay_events(response, tale), on_close=response.aclose)
        with _upstream_calls(timeout):
            response = await _unless_disconnected(request, client().send(upstream))
        if response.status_code >= 400:
            raise UpstreamError(response.status_code, response.content)
        if tale is not None:
            try:
                answer = response.json()
            except ValueError:
                answer = None
            if isinstance(answer, dict):
                answer["tale"] = tale
                return SafeJSONResponse(answer, status_code=response.status_code)
        return Response(response.content, status_code=response.status_code,
                        media_type=response.headers.get("content-type", "application/json"))

    async def get(path: str) -> Response:
        with _upstream_calls(timeout):
            response = await client().get(path)
        if response.status_code >= 400:
            raise UpstreamError(response.status_code, response.content)
        return Response(response.content, status_code=response.status_code,
                        media_type=response.headers.get("content-type", "application/json"))

    @app.get("/health")
    async def health() -> Response:
        """Healthy when the engine answers its model list (a probe carries no key: the front's own
        key is not needed here; the engine's is sent)."""
        try:
            with _upstream_calls(min(timeout, connect_timeout)):
                response = await client().get("models", timeout=min(timeout, connect_timeout))
        except APIError as exc:
            return SafeJSONResponse({"status": "unhealthy", "upstream": exc.code}, status_code=503)
        if response.status_code >= 400:
            return SafeJSONResponse({"status": "unhealthy", "upstream": f"HTTP {response.status_code}"},
                                    status_code=503)
        return SafeJSONResponse({"status": "ok", "upstream": "ok"})

    v1 = APIRouter(prefix="/v1")

    @v1.get("/models")
    async def models() -> Response:
        return await get("models")

    @v1.get("/models/{model_id:path}")
    async def model(model_id: str) -> Response:
        return await get(f"models/{model_id}")

    @v1.post("/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await forward(request, "chat")

    @v1.post("/completions")
    async def completions(request: Request) -> Response:
        return await forward(request, "completion")

    app.include_router(v1)
    return app


def run_upstream(args: Any) -> int:
    """``tale serve --upstream URL``: serve the front until interrupted (Ctrl-C finishes the requests
    in flight).

    Options that only mean something for a local model (``--model``, ``--adapter``, ``--merge``,
    ``--enforce``, ``--device``) are refused, naming the option.
    """
    from .cli import guard_settings, launch

    require("uvicorn", extra="serve", purpose="`tale serve --upstream`")
    local = [flag for flag, value in (("--model", args.model), ("--adapter", args.adapter), ("--merge", args.merge),
                                      ("--enforce", args.enforce), ("--device", args.device)) if value]
    if local:
        raise ValueError(f"{', '.join(local)} configure a local model and cannot be combined with --upstream "
                         "(the engine behind the front has its own settings)")
    guards = guard_settings(args)
    api_key = guards["api_key"]
    thinking = {"auto": None, "off": False}.get(args.upstream_thinking, args.upstream_thinking)
    app = create_upstream_app(
        args.upstream, upstream_api_key=args.upstream_api_key or os.environ.get(UPSTREAM_API_KEY_ENV) or None,
        estimator=args.estimator, thinking=thinking, timeout=args.upstream_timeout, max_body_bytes=args.max_body_bytes,
        **guards,
    )
    return launch(app, args, api_key, serving=f"TALE front for {app.state.upstream_url}",
                  behind="the engine behind it")
