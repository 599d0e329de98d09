"""OpenAI-style errors for ``tale serve``: every failure is ``{"error": {message, type, param, code}}``.

The status table (also in ``docs/vllm_and_openai.md``):

=====  =======================  ==========================================================================
 400   invalid_request_error    malformed JSON, a missing or malformed field, a value out of range, a
                                prompt too long for the context (code ``context_length_exceeded``),
                                an unrecognised parameter (code ``unknown_parameter``), text that is
                                not valid Unicode, named by field (code ``invalid_unicode``), messages
                                the chat template refuses (code ``chat_template_error``), ``max_tokens``
                                above the server's ``--max-tokens-limit``, a tool or response schema
                                that is not JSON Schema or that the constraint cannot compile (named)
 401   invalid_request_error    missing or wrong ``Authorization: Bearer`` key (code ``invalid_api_key``)
 403   invalid_request_error    an ``Origin`` header not allowed by ``--allow-origin`` (code
                                ``origin_not_allowed``), a Host outside the allow-list (code
                                ``host_not_allowed``)
 404   invalid_request_error    unknown model (code ``model_not_found``) or route (code ``not_found``)
 405   invalid_request_error    wrong HTTP method on a known route
 413   invalid_request_error    body over the size limit (code ``request_too_large``)
 415   invalid_request_error    a POST body that is not ``application/json`` in UTF-8
                                (code ``unsupported_media_type``)
 422   invalid_request_error    a well-formed parameter this server does not support (n > 1, logprobs,
                                hosted tools, ``tale_enforce`` without ``--enforce``, a thinking budget
                                on a model without a thinking block, ``strict`` under ``--constrain
                                never``) (code ``unsupported_parameter``)
 429   rate_limit_error         the waiting queue is full (``--max-queue``); ``Retry-After`` says
                                when to try again (code ``rate_limit_exceeded``)
 500   server_error             a bug: the error object with the request id only (the server's log
                                has the details, under that id)
 503   server_error             the server is shutting down, or its decoding scheduler has stopped
                                (code ``unavailable``)
=====  =======================  ==========================================================================

Every ``param`` names the request field at fault (``messages[0].content``), or the header
(``Content-Type``, ``Origin``, ``Host``). This module needs no web framework; `serve.guards`
installs the handlers.
"""

from __future__ import annotations

from typing import Any

from ..core.errors import TaleError

__all__ = [
    "APIError",
    "bad_request",
    "chat_template_error",
    "context_length_exceeded",
    "error_body",
    "unknown_parameter",
    "unsupported",
]


class APIError(TaleError):
    """An error answered with an HTTP status and the OpenAI error object.

    Args:
        status: HTTP status code.
        message: What went wrong and how to fix it.
        type: OpenAI error type (``"invalid_request_error"``, ``"server_error"``).
        param: The request field at fault, if any.
        code: A machine-readable code, if any.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        """The JSON body of the answer."""
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


def error_body(message: str, *, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_request(message: str, *, param: str | None = None, code: str | None = "invalid_value") -> APIError:
    """400: a malformed or out-of-range value."""
    return APIError(400, message, param=param, code=code)


def unsupported(param: str, message: str) -> APIError:
    """422: a well-formed parameter this server does not support."""
    return APIError(422, message, param=param, code="unsupported_parameter")


def unknown_parameter(param: str) -> APIError:
    """400: a parameter the API does not define (OpenAI answers these with 400 too)."""
    return APIError(400, f"Unrecognized request argument supplied: {param}", param=param, code="unknown_parameter")


def context_length_exceeded(message: str, *, param: str = "messages") -> APIError:
    """400: the prompt (and the requested output) does not fit the model's context window."""
    return APIError(400, message, param=param, code="context_length_exceeded")


def chat_template_error(error: Exception) -> APIError:
    """400: the model's chat template refused the messages (roles that must alternate, say); its own
    message is passed on."""
    return APIError(400, f"the model's chat template refused these messages: {error}", param="messages",
                    code="chat_template_error")
