"""Guards for an OpenAI-compatible FastAPI app: who may call it, what it accepts, how it fails.

Written for any such app (``create_app``'s, and a front for another engine):

- `install_guards` adds one ASGI middleware that, for every HTTP request, in this order:
  gives it a request id (``X-Request-Id`` on the answer, the one detail a 500 body carries);
  refuses a ``Host`` outside ``allowed_hosts`` when that is given (a DNS-rebinding page reaches a
  loopback server under its own host name: 403 ``host_not_allowed``); refuses a request that
  carries an ``Origin`` unless ``allow_origins`` allows it (a page on any site may POST a "simple"
  request to a local server without a preflight: 403 ``origin_not_allowed``), and answers allowed
  origins' preflights and CORS headers; asks for the API key on the protected routes (401
  ``invalid_api_key``); and on a POST requires a JSON body in UTF-8 (415 ``unsupported_media_type``:
  the one type a browser cannot send cross-site without a preflight).
- `install_error_handlers` answers every failure with the OpenAI error object (the table in
  `serve.errors`): 429 with ``Retry-After`` for a full queue, 503 while shutting down, 499 for a
  client that left, and for a bug a 500 whose body holds only the request id (the log has the rest).
- `read_json` reads a body: size limit (413), JSON (400 ``invalid_json``), and text that is valid
  Unicode everywhere: a lone surrogate (``"\\ud800"``) or bytes that are not UTF-8 in any string or
  field name is a 400 ``invalid_unicode`` naming that field.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from .._optional import require

require("fastapi", extra="serve", purpose="`tale serve`")

from fastapi import FastAPI, Request  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import JSONResponse, Response  # noqa: E402
from starlette.datastructures import Headers  # noqa: E402
from starlette.exceptions import HTTPException as StarletteHTTPException  # noqa: E402

from ..core.errors import BatcherClosed, JobCancelled, PromptTooLongError, QueueFull  # noqa: E402
from .errors import APIError, bad_request, context_length_exceeded, error_body  # noqa: E402

__all__ = [
    "RETRY_AFTER_S",
    "SafeJSONResponse",
    "check_unicode",
    "error_response",
    "install_error_handlers",
    "install_guards",
    "read_json",
    "request_id",
]

logger = logging.getLogger("tale_integrations.serve")

#: Seconds a client refused with 429 is told to wait.
RETRY_AFTER_S = 1
_POSTS = frozenset({"POST", "PUT", "PATCH"})
_SURROGATE = re.compile("[\ud800-\udfff]")


class SafeJSONResponse(JSONResponse):
    """A JSON response that renders any text, even a lone surrogate (escaped, never a failed encoding)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def request_id(request: Request) -> str:
    """The request's id (set by `install_guards`; a fresh one when the app has no guards)."""
    state = request.scope.setdefault("state", {})
    return state.setdefault("request_id", _new_id())


def _new_id() -> str:
    return f"req_{uuid.uuid4().hex}"


def error_response(error: APIError, *, headers: dict[str, str] | None = None) -> SafeJSONResponse:
    """The answer to an `APIError`: its status and the OpenAI error object."""
    extra = {"WWW-Authenticate": "Bearer"} if error.status == 401 else {}
    return SafeJSONResponse(error.body(), status_code=error.status, headers={**extra, **(headers or {})})


# -- the middleware -----------------------------------------------------------------------------

def _host_name(value: str) -> str:
    """The host part of a Host header (no port, no IPv6 brackets), lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    return value.rpartition(":")[0] if value.count(":") == 1 else value


class _Guard:
    """The ASGI middleware of `install_guards`."""

    def __init__(self, app: Any, *, api_key: str | None, allow_origins: tuple[str, ...],
                 allowed_hosts: tuple[str, ...] | None, protected: str) -> None:
        self.app, self.api_key, self.protected = app, api_key, protected
        self.any_origin = "*" in allow_origins
        self.origins = frozenset(o.rstrip("/").lower() for o in allow_origins)
        self.hosts = None if allowed_hosts is None else frozenset(h.strip("[]").lower() for h in allowed_hosts)

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = scope.setdefault("state", {}).setdefault("request_id", _new_id())
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        extra = [(b"x-request-id", rid.encode())]
        allowed_origin = origin is not None and self._origin_allowed(origin)
        if allowed_origin:
            extra += [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin"),
                      (b"access-control-expose-headers", b"X-Request-Id, Retry-After")]

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        error = self._refusal(scope, headers, origin, allowed_origin)
        if error is not None:
            await error_response(error)(scope, receive, send_with_headers)
            return
        if allowed_origin and scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            asked = headers.get("access-control-request-headers", "authorization, content-type")
            preflight = Response(status_code=204, headers={
                "Access-Control-Allow-Methods": "GET, POST, OPTIONS", "Access-Control-Allow-Headers": asked,
                "Access-Control-Max-Age": "600"})
            await preflight(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)

    def _origin_allowed(self, origin: str) -> bool:
        return self.any_origin or origin.rstrip("/").lower() in self.origins

    def _refusal(self, scope: dict[str, Any], headers: Headers, origin: str | None,
                 allowed_origin: bool) -> APIError | None:
        if self.hosts is not None and _host_name(headers.get("host", "")) not in self.hosts:
            return APIError(403, "this server does not answer to the host name in the Host header; call it by "
                                 "an allowed name (tale serve --allow-host NAME adds one)",
                            param="Host", code="host_not_allowed")
        if origin is not None and not allowed_origin:
            return APIError(403, "requests from web pages are refused: this request carries an Origin header that "
                                 "is not allowed (tale serve --allow-origin ORIGIN allows one)",
                            param="Origin", code="origin_not_allowed")
        if scope["method"] == "OPTIONS":
            return None
        path = scope.get("path", "")
        if self.api_key is not None and (path == self.protected or path.startswith(self.protected + "/")):
            scheme, _, token = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), self.api_key.encode()):
                return APIError(401, "Incorrect or missing API key: send the header 'Authorization: Bearer <key>'",
                                code="invalid_api_key")
        if scope["method"] in _POSTS:
            media, *params = headers.get("content-type", "").split(";")
            charset = next((p.partition("=")[2].strip().strip('"').lower() for p in params
                            if p.partition("=")[0].strip().lower() == "charset"), "utf-8")
            if media.strip().lower() != "application/json" or charset not in ("utf-8", "utf8"):
                got = headers.get("content-type")
                return APIError(415, f"the request body must be JSON: send 'Content-Type: application/json' "
                                     f"(UTF-8), got {got!r}", param="Content-Type", code="unsupported_media_type")
        return None


def install_guards(
    app: FastAPI,
    *,
    api_key: str | None = None,
    allow_origins: Iterable[str] = (),
    allowed_hosts: Iterable[str] | None = None,
    protected: str = "/v1",
) -> None:
    """Add the guards (see the module docstring) to ``app``.

    Args:
        app: The FastAPI app.
        api_key: When set, routes under ``protected`` need ``Authorization: Bearer <api_key>``.
        allow_origins: Origins (``https://host:port``) whose requests are answered, with CORS headers;
            ``"*"`` allows every origin. Requests with any other ``Origin`` header are refused.
        allowed_hosts: Host names the app answers to (``serve.cli.default_allowed_hosts`` gives the
            loopback ones); None: any.
        protected: The path prefix the API key guards.

    Raises:
        ValueError: an empty API key.
    """
    if api_key is not None and (not isinstance(api_key, str) or not api_key.strip()):
        raise ValueError("api_key must be a non-empty string or None (an empty key would guard nothing)")
    app.add_middleware(_Guard, api_key=api_key, allow_origins=tuple(allow_origins),
                       allowed_hosts=None if allowed_hosts is None else tuple(allowed_hosts), protected=protected)


# -- the error handlers -------------------------------------------------------------------------

def install_error_handlers(app: FastAPI) -> None:
    """Answer every failure with the OpenAI error object (the table in `serve.errors`)."""

    async def api_error(request: Request, exc: APIError) -> Response:
        return error_response(exc)

    async def too_long(request: Request, exc: PromptTooLongError) -> Response:
        return error_response(context_length_exceeded(str(exc)))

    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return SafeJSONResponse(error_body(message, type="invalid_request_error", code=code),
                                status_code=exc.status_code, headers=getattr(exc, "headers", None))

    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        where = ".".join(str(p) for p in exc.errors()[0].get("loc", ())) if exc.errors() else None
        return error_response(bad_request(f"invalid request: {where or 'a field'} is malformed", param=where))

    async def full(request: Request, exc: QueueFull) -> Response:
        return SafeJSONResponse(error_body(str(exc), type="rate_limit_error", code="rate_limit_exceeded"),
                                status_code=429, headers={"Retry-After": str(RETRY_AFTER_S)})

    async def closed(request: Request, exc: BatcherClosed) -> Response:
        return SafeJSONResponse(error_body(str(exc), type="server_error", code="unavailable"), status_code=503)

    async def gone(request: Request, exc: Exception) -> Response:
        return Response(status_code=499)  # the client is gone; nothing will read this

    async def unexpected(request: Request, exc: Exception) -> Response:
        rid = request_id(request)
        logger.error("unexpected error on %s %s (request id %s)", request.method, request.url.path, rid, exc_info=exc)
        body = error_body(f"internal server error (request id {rid}); the server's log has the details",
                          type="server_error", code="internal_error")
        return SafeJSONResponse(body, status_code=500, headers={"X-Request-Id": rid})

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(PromptTooLongError, too_long)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(QueueFull, full)
    app.add_exception_handler(BatcherClosed, closed)
    app.add_exception_handler(JobCancelled, gone)
    app.add_exception_handler(Exception, unexpected)


# -- reading a body -----------------------------------------------------------------------------

def check_unicode(body: Any) -> None:
    """Refuse a lone surrogate (or an undecodable byte, read as one) in any string or field name of a
    parsed JSON body: a 400 ``invalid_unicode`` naming the field."""
    stack: list[tuple[Any, str]] = [(body, "")]
    while stack:
        value, where = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                raise bad_request(f"{where or 'the body'} is not valid Unicode text (a lone surrogate such as "
                                  "\\ud800, or bytes that are not UTF-8); send UTF-8 text", param=where or None,
                                  code="invalid_unicode")
        elif isinstance(value, dict):
            for key, item in value.items():
                if _SURROGATE.search(key):
                    name = key.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")
                    raise bad_request(f"the field name {name!r}{' in ' + where if where else ''} is not valid "
                                      "Unicode text; send UTF-8 field names", param=where or name,
                                      code="invalid_unicode")
                stack.append((item, f"{where}.{key}" if where else key))
        elif isinstance(value, list):
            stack.extend((item, f"{where}[{i}]") for i, item in enumerate(value))


async def read_json(request: Request, limit: int) -> Any:
    """The body as JSON, refusing more than ``limit`` bytes (by Content-Length, and while reading), text
    that is not JSON, and strings or field names that are not valid Unicode (`check_unicode`)."""
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

    # Bytes that are not UTF-8 become lone surrogates here, so the check below can name their field.
    text = bytes(body).decode("utf-8", "surrogateescape")
    try:
        parsed = json.loads(text, parse_constant=no_constants)
    except (ValueError, RecursionError) as exc:
        reason = str(exc).encode("ascii", "backslashreplace").decode("ascii")
        raise bad_request(f"We could not parse the JSON body of your request ({reason}); send a valid JSON object",
                          code="invalid_json") from None
    check_unicode(parsed)
    return parsed
