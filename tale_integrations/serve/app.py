"""``create_app``: an OpenAI-compatible FastAPI app over a local `HFGenerator`.

Routes: ``POST /v1/chat/completions`` and ``POST /v1/completions`` (plain, or streamed with
server-sent events), ``GET /v1/models``, ``GET /v1/models/{id}`` and ``GET /health``.
``/health`` stays open when an API key is set (a load balancer's probe carries no key, and the
route reveals nothing but "ok"); every ``/v1`` route needs ``Authorization: Bearer <key>``.

``/v1/completions`` applies the prompt as a single user turn through the model's chat template
(the served models are chat models; raw-text continuation is not offered), with OpenAI's default
cap of 16 tokens when ``max_tokens`` is not given. Chat requests with no ``max_tokens`` get the
generator's ``max_new_tokens``, lowered to the room left in the context window.

Requests without ``tale_budget`` are plain OpenAI requests. With it, see `serve.tale`.
Errors: the table in `serve.errors`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from .._optional import require

fastapi = require("fastapi", extra="serve", purpose="`tale serve`")

from fastapi import APIRouter, Depends, FastAPI, Request  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import JSONResponse, Response, StreamingResponse  # noqa: E402
from starlette.exceptions import HTTPException as StarletteHTTPException  # noqa: E402

from ..core.checks import check_positive_int  # noqa: E402
from ..core.estimators import get_estimator, is_zero_shot  # noqa: E402
from ..core.generation import PromptTooLongError  # noqa: E402
from ..core.prompts import QuestionFormat  # noqa: E402
from .batcher import BatcherClosed, JobCancelled, MicroBatcher  # noqa: E402
from .errors import APIError, bad_request, context_length_exceeded, error_body, unsupported  # noqa: E402
from .params import COMPLETIONS_DEFAULT_MAX_TOKENS, GenerationRequest, parse_chat, parse_completion  # noqa: E402
from .responses import Shape  # noqa: E402
from .streaming import StreamPump, sse_events  # noqa: E402
from .tale import TalePlan, plan_budget  # noqa: E402

__all__ = ["create_app"]

logger = logging.getLogger("tale_integrations.serve")

#: How often a waiting request checks whether its client is still there (seconds).
DISCONNECT_POLL_S = 0.2


class _ClientGone(Exception):
    """The client disconnected while its request waited; nobody reads the answer."""


class _EventStream(StreamingResponse):
    """A streaming response that always stops its generation, however the response ends: finished,
    client gone, cancelled, or never started."""

    def __init__(self, content: Any, *, on_close: Any, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()
            await self.body_iterator.aclose()  # type: ignore[attr-defined]


@contextmanager
def _backend_errors() -> Iterator[None]:
    """Bad input that only the backend could see (it names the argument and the fix) is a 400."""
    try:
        yield
    except PromptTooLongError as exc:
        raise context_length_exceeded(str(exc)) from None
    except ValueError as exc:
        raise bad_request(str(exc)) from None


def _consume(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved, so an abandoned request's failure is not reported twice


async def _watch(request: Request, work: Coroutine[Any, Any, Any], cancel: threading.Event) -> Any:
    """Await ``work`` while polling the client; if it disconnects, set ``cancel`` and give up."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise _ClientGone()
    finally:
        if not task.done():
            cancel.set()
            task.add_done_callback(_consume)


async def _read_json(request: Request, limit: int) -> Any:
    """The body as JSON, refusing more than ``limit`` bytes (by Content-Length, and while reading)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise bad_request(f"invalid Content-Length header: {declared!r}", code="invalid_request")
        if int(declared) > limit:
            raise APIError(413, f"the request body is {int(declared)} bytes; the limit is {limit}",
                           code="request_too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise APIError(413, f"the request body exceeds the limit of {limit} bytes", code="request_too_large")

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    try:
        return json.loads(bytes(body), parse_constant=no_constants)
    except (ValueError, RecursionError) as exc:
        raise bad_request(f"We could not parse the JSON body of your request ({exc}); send a valid JSON object",
                          code="invalid_json") from None


def create_app(
    generator: Any,
    *,
    api_key: str | None = None,
    max_body_bytes: int = 1_000_000,
    max_batch_size: int = 16,
    batch_window_ms: float = 10,
    served_model_name: str | None = None,
    estimator: Any = "zero-shot",
) -> FastAPI:
    """An OpenAI-compatible app serving ``generator``.

    Args:
        generator: An `HFGenerator` (anything with its ``generate`` with per-row lists, ``stream``,
            ``encode_chat``, ``context_window``, ``max_new_tokens`` and ``enforcement``).
        api_key: When set, every ``/v1`` request needs ``Authorization: Bearer <api_key>``.
        max_body_bytes: Largest accepted request body. Default 1,000,000.
        max_batch_size: Most requests in one micro-batch (1: one at a time). Default 16.
        batch_window_ms: How long the first waiting request waits for others. Default 10.
        served_model_name: The model name clients must send; default ``generator.model_name``.
        estimator: The estimator behind ``"tale_budget": "auto"``: ``"zero-shot"`` (default: the paper's,
            on the served model), ``"learned"`` (the shipped learned estimator: no model call),
            ``"learned:PATH"``, or a core `BudgetEstimator`.
    """
    for method in ("generate", "stream", "encode_chat"):
        if not callable(getattr(generator, method, None)):
            raise TypeError(f"generator must be an HFGenerator (with {method}), got {type(generator).__name__}")
    check_positive_int("max_body_bytes", max_body_bytes)
    if api_key is not None and (not isinstance(api_key, str) or not api_key.strip()):
        raise ValueError("api_key must be a non-empty string or None")
    auto_estimator = None if is_zero_shot(estimator) else get_estimator(estimator)
    name = served_model_name or generator.model_name
    batcher = MicroBatcher(generator, max_batch_size=max_batch_size, window_ms=batch_window_ms)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(generator.load)
        await batcher.start()
        try:
            yield
        finally:
            await batcher.close()  # finishes every request still waiting

    app = FastAPI(title="tale serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.generator = generator
    app.state.batcher = batcher
    app.state.served_model_name = name
    _install_error_handlers(app)

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), api_key.encode()):
            raise APIError(401, "Incorrect or missing API key: send the header 'Authorization: Bearer <key>'",
                           code="invalid_api_key")

    def check_model(model: str) -> None:
        if model != name:
            raise APIError(404, f"The model `{model}` does not exist; this server serves `{name}`",
                           param="model", code="model_not_found")

    async def fit(messages: list[dict[str, str]], req: GenerationRequest) -> int:
        """The output cap for ``messages``, or a context-length error."""
        ids = await asyncio.to_thread(generator.encode_chat, messages)
        window = generator.context_window
        if len(ids) >= window:
            raise context_length_exceeded(
                f"This model's maximum context length is {window} tokens. However, your messages resulted in "
                f"{len(ids)} tokens. Please reduce the length of the messages.")
        room = window - len(ids)
        if req.max_tokens is not None:
            if req.max_tokens > room:
                raise context_length_exceeded(
                    f"This model's maximum context length is {window} tokens. However, you requested "
                    f"{len(ids) + req.max_tokens} tokens ({len(ids)} in the messages, {req.max_tokens} in the "
                    "completion). Please reduce the length of the messages or completion.", param="max_tokens")
            return req.max_tokens
        default = generator.max_new_tokens if req.kind == "chat" else COMPLETIONS_DEFAULT_MAX_TOKENS
        return min(default, room)

    async def prepare(req: GenerationRequest, cancel: threading.Event) -> tuple[TalePlan | None, list, int]:
        """The TALE plan (if any), the conversation to answer and its output cap."""
        cap = await fit(req.messages, req)
        if req.tale_enforce:
            reserve = generator.enforcement.answer_reserve
            if cap <= reserve:
                raise bad_request(f"tale_enforce needs max_tokens above the enforcer's answer reserve ({reserve}), "
                                  f"got {cap}", param="max_tokens")
        if req.tale_budget is None:
            return None, req.messages, cap
        with _backend_errors():
            plan = await plan_budget(req.messages, req.tale_budget, batcher=batcher, limit=cap,
                                     enforce=req.tale_enforce, cancel=cancel, estimator=auto_estimator)
        return plan, plan.messages, await fit(plan.messages, req)

    async def answer(request: Request, req: GenerationRequest) -> Response:
        check_model(req.model)
        if req.tale_enforce and getattr(generator, "enforcement", None) is None:
            raise unsupported("tale_enforce", "tale_enforce needs the budget enforcer: start the server with "
                                              "`tale serve --enforce` (HFGenerator(enforce_budget=True))")
        cancel = threading.Event()
        if not req.stream:
            async def work() -> Response:
                plan, messages, cap = await prepare(req, cancel)
                with _backend_errors():
                    generation = await batcher.submit(
                        messages, max_tokens=cap, temperature=req.temperature, stop=req.stop,
                        budget=None if plan is None else plan.enforced_budget, cancel=cancel)
                return JSONResponse(Shape(req.kind, name, tale=plan).response(generation))

            return await _watch(request, work(), cancel)
        plan, messages, cap = await _watch(request, prepare(req, cancel), cancel)
        if not batcher.running:
            raise BatcherClosed("the server is shutting down and takes no new requests")
        settings = {"max_tokens": cap, "stop": list(req.stop) or None, "temperature": req.temperature,
                    "budget": None if plan is None else plan.enforced_budget, "answer_format": QuestionFormat.CHAT}
        pump = StreamPump(generator, messages, settings).start()
        shape = Shape(req.kind, name, tale=plan, include_usage=req.include_usage)
        return _EventStream(sse_events(pump, shape), on_close=pump.stop, media_type="text/event-stream",
                            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok" if batcher.running else "stopping", "model": name}

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorize)])

    def model_card() -> dict[str, Any]:
        return {"id": name, "object": "model", "created": 0, "owned_by": "tale-integrations"}

    @v1.get("/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @v1.get("/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        check_model(model_id)
        return model_card()

    @v1.post("/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await answer(request, parse_chat(await _read_json(request, max_body_bytes)))

    @v1.post("/completions")
    async def completions(request: Request) -> Response:
        return await answer(request, parse_completion(await _read_json(request, max_body_bytes)))

    app.include_router(v1)
    return app


def _error(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    """Every failure answers with the OpenAI error object (see the table in `serve.errors`)."""

    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return _error(exc.status, exc.body(), headers)

    async def too_long(request: Request, exc: PromptTooLongError) -> JSONResponse:
        return await api_error(request, context_length_exceeded(str(exc)))

    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return _error(exc.status_code, error_body(message, type="invalid_request_error", code=code),
                      getattr(exc, "headers", None))

    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(400, error_body(f"invalid request: {exc.errors()}", type="invalid_request_error",
                                      code="invalid_value"))

    async def closed(request: Request, exc: BatcherClosed) -> JSONResponse:
        return _error(503, error_body(str(exc), type="server_error", code="unavailable"))

    async def gone(request: Request, exc: Exception) -> Response:
        return Response(status_code=499)  # the client is gone; nothing will read this

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error(500, error_body(f"internal server error: {exc!r}", type="server_error", code="internal_error"))

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(PromptTooLongError, too_long)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(BatcherClosed, closed)
    app.add_exception_handler(_ClientGone, gone)
    app.add_exception_handler(JobCancelled, gone)
    app.add_exception_handler(Exception, unexpected)
