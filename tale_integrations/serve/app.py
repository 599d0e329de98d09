"""``create_app``: an OpenAI-compatible FastAPI app over a local `HFGenerator`.

Routes: ``POST /v1/chat/completions`` and ``POST /v1/completions`` (plain, or streamed with
server-sent events), ``GET /v1/models``, ``GET /v1/models/{id}`` and ``GET /health``.
``/health`` stays open when an API key is set (a load balancer's probe carries no key); it answers
503 while the server shuts down or when its decoding scheduler has stopped. Every ``/v1`` route
needs ``Authorization: Bearer <key>`` when a key is set; the other guards (JSON bodies only, no
foreign ``Origin``, the Host allow-list) are `serve.guards`'.

Requests share the model through continuous batching by default (`ContinuousBatcher`: plain and
streamed requests join the running batch at the next decoding step and leave when done or when
their client goes away), or through the earlier micro-batcher (``scheduler="microbatch"``, whose
streams run one at a time). Either way at most ``max_queue`` requests wait; past that, 429.

``/v1/completions`` applies the prompt as a single user turn through the model's chat template
(the served models are chat models; raw-text continuation is not offered), with OpenAI's default
cap of 16 tokens when ``max_tokens`` is not given. Chat requests with no ``max_tokens`` get the
generator's ``max_new_tokens``, lowered to the room left in the context window and to
``max_tokens_limit``, which is also the most a request may ask for.

Chat requests may offer ``tools`` (with ``tool_choice``), ask for a ``response_format`` (``json_object``,
``json_schema``), and set a thinking budget (``reasoning_effort``, ``thinking_token_budget``,
``chat_template_kwargs``) on a model whose chat template has a thinking block: `serve.turns`.

Requests without ``tale_budget`` are plain OpenAI requests. With it, see `serve.tale`.
Errors: the table in `serve.errors`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Coroutine, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Literal

from .._optional import require

fastapi = require("fastapi", extra="serve", purpose="`tale serve`")

from fastapi import APIRouter, FastAPI, Request  # noqa: E402
from fastapi.responses import Response, StreamingResponse  # noqa: E402

from ..core.checks import check_choice, check_number, check_positive_int  # noqa: E402
from ..core.estimators import get_estimator, is_zero_shot  # noqa: E402
from ..core.generation import PromptTooLongError  # noqa: E402
from ..core.prompts import QuestionFormat  # noqa: E402
from ..core.thinking import Engine, ThinkingPolicy, find_thinking_model  # noqa: E402
from .batcher import BatcherClosed, ContinuousBatcher, MicroBatcher  # noqa: E402
from .errors import APIError, bad_request, chat_template_error, context_length_exceeded, unsupported  # noqa: E402
from .guards import SafeJSONResponse, install_error_handlers, install_guards, read_json, request_id  # noqa: E402
from .params import COMPLETIONS_DEFAULT_MAX_TOKENS, GenerationRequest, parse_chat, parse_completion  # noqa: E402
from .responses import Shape  # noqa: E402
from .streaming import StreamPump, sse_events  # noqa: E402
from .tale import TalePlan, plan_budget  # noqa: E402
from .turns import CONSTRAIN_MODES, ConstrainMode, ServeTurn  # noqa: E402

__all__ = ["SCHEDULERS", "create_app"]

logger = logging.getLogger("tale_integrations.serve")

#: The ways requests share the model: continuous batching (default) or the earlier micro-batcher.
SCHEDULERS = ("continuous", "microbatch")

try:  # the chat template's own errors (transformers renders templates with jinja2)
    from jinja2.exceptions import TemplateError as _TemplateError
except ImportError:  # pragma: no cover - transformers requires jinja2 for chat templates
    class _TemplateError(Exception):  # type: ignore[no-redef]  # noqa: N818 - never raised
        pass


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
    except _TemplateError as exc:
        raise chat_template_error(exc) from None
    except ValueError as exc:
        raise bad_request(str(exc)) from None


def _consume(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved, so an abandoned request's failure is not reported twice


async def _disconnected(request: Request) -> None:
    """Return once the client disconnects (its body is read: the next ASGI message says so)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _watch(request: Request, work: Coroutine[Any, Any, Any], cancel: threading.Event) -> Any:
    """Await ``work``; if the client disconnects first, set ``cancel`` at once and give up."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        raise _ClientGone()
    finally:
        gone.cancel()
        if not task.done():
            cancel.set()
            task.add_done_callback(_consume)


def create_app(
    generator: Any,
    *,
    api_key: str | None = None,
    max_body_bytes: int = 1_000_000,
    max_batch_size: int = 16,
    batch_window_ms: float = 10,
    served_model_name: str | None = None,
    estimator: Any = "zero-shot",
    scheduler: Literal["continuous", "microbatch"] = "continuous",
    max_queue: int = 256,
    max_tokens_limit: int | None = None,
    prefill_tokens: int = 256,
    allow_origins: Iterable[str] = (),
    allowed_hosts: Iterable[str] | None = None,
    shutdown_timeout: float | None = 30.0,
    constrain: ConstrainMode = "auto",
) -> FastAPI:
    """An OpenAI-compatible app serving ``generator``.

    Args:
        generator: An `HFGenerator` (anything with its ``generate`` with per-row lists, ``stream``,
            ``encode_chat``, ``context_window``, ``max_new_tokens`` and ``enforcement``; the
            continuous scheduler also drives its model step by step).
        api_key: When set, every ``/v1`` request needs ``Authorization: Bearer <api_key>``.
        max_body_bytes: Largest accepted request body. Default 1,000,000.
        max_batch_size: Most requests decoding together (1: one at a time). Default 16.
        batch_window_ms: Micro-batcher only: how long the first waiting request waits for others.
        served_model_name: The model name clients must send; default ``generator.model_name``.
        estimator: The estimator behind ``"tale_budget": "auto"``: ``"zero-shot"`` (default: the paper's,
            on the served model), ``"learned"`` (the shipped learned estimator: no model call),
            ``"learned:PATH"``, or a core `BudgetEstimator`.
        scheduler: ``"continuous"`` (default) or ``"microbatch"``.
        max_queue: Most requests waiting for the model; past it, 429 with ``Retry-After``. Default 256.
        max_tokens_limit: The most output tokens a request may ask for (a 400 above it), and the
            ceiling of the default cap. None: the context window is the only limit.
        prefill_tokens: Continuous scheduler only: most prompt tokens prefilled between two decoding
            steps (smaller keeps running streams smoother; larger admits newcomers faster). Default 256.
        allow_origins: Origins whose browser requests are answered (``"*"``: all); see `serve.guards`.
        allowed_hosts: Host names the server answers to (None: any); see `guards.default_allowed_hosts`.
        shutdown_timeout: Seconds requests in flight get to finish at shutdown (None: no limit).
        constrain: When tool calls and structured output are held to their schema while decoding:
            ``"auto"`` (default: JSON response formats, required tool calls, ``strict`` schemas),
            ``"always"`` (every turn with tools too) or ``"never"``; see `serve.turns`.
    """
    for method in ("generate", "stream", "encode_chat"):
        if not callable(getattr(generator, method, None)):
            raise TypeError(f"generator must be an HFGenerator (with {method}), got {type(generator).__name__}")
    check_positive_int("max_body_bytes", max_body_bytes)
    check_choice("scheduler", scheduler, SCHEDULERS)
    check_choice("constrain", constrain, CONSTRAIN_MODES)
    check_positive_int("max_queue", max_queue)
    check_positive_int("max_tokens_limit", max_tokens_limit, optional=True)
    if shutdown_timeout is not None:
        check_number("shutdown_timeout", shutdown_timeout, low=0, hint=" (seconds)")
    auto_estimator = None if is_zero_shot(estimator) else get_estimator(estimator)
    name = served_model_name or generator.model_name
    continuous = scheduler == "continuous"
    batcher: ContinuousBatcher | MicroBatcher
    if continuous:
        batcher = ContinuousBatcher(generator, max_rows=max_batch_size, max_queue=max_queue,
                                    prefill_tokens=prefill_tokens)
    else:
        batcher = MicroBatcher(generator, max_batch_size=max_batch_size, window_ms=batch_window_ms,
                               max_queue=max_queue)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(generator.load)
        await batcher.start()
        try:
            yield
        finally:
            await batcher.close(timeout=shutdown_timeout)  # requests in flight finish, up to the timeout

    app = FastAPI(title="tale serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.generator = generator
    app.state.batcher = batcher
    app.state.served_model_name = name
    app.state.scheduler = scheduler
    app.state.constrain = constrain
    install_error_handlers(app)
    install_guards(app, api_key=api_key, allow_origins=allow_origins, allowed_hosts=allowed_hosts)

    async def client_gone(request: Request, exc: Exception) -> Response:
        return Response(status_code=499)  # the client is gone; nothing will read this

    app.add_exception_handler(_ClientGone, client_gone)

    def check_model(model: str) -> None:
        if model != name:
            raise APIError(404, f"The model `{model}` does not exist; this server serves `{name}`",
                           param="model", code="model_not_found")

    def encode(turn: ServeTurn) -> list[int]:
        with _backend_errors():
            return generator.encode_chat(turn.conversation, chat_template_kwargs=turn.template_kwargs)

    def thinking_room(ids: list[int], turn: ServeTurn) -> int:
        """Output tokens a turn's thinking budget needs (the block's markers, the budget and the answer's
        reserve), or 0: no budget, or a prompt that closed the block."""
        markers = generator.thinking_markers if turn.thinking_budget is not None else None
        state = markers.prompt_state(ids) if markers is not None else "closed"
        if state == "closed":
            return 0
        return markers.overhead(state) + generator.settings.thinking.answer_reserve + turn.thinking_budget

    async def fit(turn: ServeTurn, req: GenerationRequest) -> int:
        """The output cap for the turn's conversation, or a context-length error. With no ``max_tokens``,
        the default is raised to hold a thinking budget (within the context and ``max_tokens_limit``)."""
        ids = await asyncio.to_thread(encode, turn)
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
            if max_tokens_limit is not None and req.max_tokens > max_tokens_limit:
                raise bad_request(f"max_tokens is {req.max_tokens}, above this server's limit of {max_tokens_limit} "
                                  f"output tokens per request; ask for at most {max_tokens_limit}", param="max_tokens")
            return req.max_tokens
        default = generator.max_new_tokens if req.kind == "chat" else COMPLETIONS_DEFAULT_MAX_TOKENS
        default = max(default, thinking_room(ids, turn))
        return min(default, room, max_tokens_limit or room)

    async def prepare(req: GenerationRequest, cancel: threading.Event) -> tuple[TalePlan | None, ServeTurn, int]:
        """The TALE plan (if any), the turn to answer and its output cap."""
        with _backend_errors():
            turn = await asyncio.to_thread(ServeTurn.for_request, generator, req, constrain=constrain)
        cap = await fit(turn, req)
        if req.tale_enforce:
            reserve = generator.enforcement.answer_reserve
            if cap <= reserve:
                raise bad_request(f"tale_enforce needs max_tokens above the enforcer's answer reserve ({reserve}), "
                                  f"got {cap}", param="max_tokens")
        if req.tale_budget is None:
            return None, turn, cap
        thinking = {"thinking": find_thinking_model("", Engine.HF), "model": name,
                    "thinking_policy": ThinkingPolicy(answer_reserve=generator.thinking_reserve)} if turn.thinks else {}
        with _backend_errors():
            plan = await plan_budget(req.messages, req.tale_budget, batcher=batcher, limit=cap,
                                     enforce=req.tale_enforce, cancel=cancel, estimator=auto_estimator, **thinking)
        turn = turn.with_plan(plan.messages, plan.thinking_budget)
        return plan, turn, await fit(turn, req)

    async def answer(request: Request, req: GenerationRequest) -> Response:
        check_model(req.model)
        if req.tale_enforce and getattr(generator, "enforcement", None) is None:
            raise unsupported("tale_enforce", "tale_enforce needs the budget enforcer: start the server with "
                                              "`tale serve --enforce` (HFGenerator(enforce_budget=True))")
        batcher.check_room()  # a full queue refuses at once, before any work
        cancel = batcher.new_cancel()

        def settings(plan: TalePlan | None, turn: ServeTurn, cap: int) -> dict[str, Any]:
            """The batchers' keyword arguments for the answer: no enforced budget on a reply held to a
            schema or that may call a tool (a cap must not cut its JSON)."""
            budget = None if plan is None or turn.holds_json else plan.enforced_budget
            return {"max_tokens": cap, "temperature": req.temperature, "stop": req.stop, "budget": budget,
                    "answer_rules": turn.answer_rules(generator, cap), **turn.decoding()}

        if not req.stream:
            async def work() -> Response:
                plan, turn, cap = await prepare(req, cancel)
                with _backend_errors():
                    generation = await batcher.submit(turn.conversation, cancel=cancel, **settings(plan, turn, cap))
                return SafeJSONResponse(Shape(req.kind, name, tale=plan, turn=turn).response(generation))

            return await _watch(request, work(), cancel)
        plan, turn, cap = await _watch(request, prepare(req, cancel), cancel)
        shape = Shape(req.kind, name, tale=plan, include_usage=req.include_usage, turn=turn)
        if isinstance(batcher, ContinuousBatcher):
            with _backend_errors():
                events = await _watch(request, batcher.open_stream(
                    turn.conversation, cancel=cancel, **settings(plan, turn, cap)), cancel)
            on_close = cancel.set
        else:
            if not batcher.running:
                raise BatcherClosed("the server is shutting down and takes no new requests")
            kwargs = settings(plan, turn, cap)
            kwargs["stop"] = list(req.stop) or None
            pump = StreamPump(generator, turn.conversation, {**kwargs, "answer_format": QuestionFormat.CHAT}).start()
            events, on_close = pump.events(), pump.stop
        return _EventStream(sse_events(events, shape, request_id=request_id(request)), on_close=on_close,
                            media_type="text/event-stream",
                            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/health")
    async def health() -> Response:
        if not batcher.alive:
            return SafeJSONResponse({"status": "unhealthy", "model": name,
                                     "error": "the decoding scheduler has stopped; restart the server"},
                                    status_code=503)
        if not batcher.running:
            return SafeJSONResponse({"status": "stopping", "model": name}, status_code=503)
        return SafeJSONResponse({"status": "ok", "model": name})

    v1 = APIRouter(prefix="/v1")

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
        return await answer(request, parse_chat(await read_json(request, max_body_bytes)))

    @v1.post("/completions")
    async def completions(request: Request) -> Response:
        return await answer(request, parse_completion(await read_json(request, max_body_bytes)))

    app.include_router(v1)
    return app
