"""In-process stand-ins for vendor APIs, for the SDKs' own transport hooks (no network).

`Capture` is an HTTP handler for ``httpx.MockTransport`` (google-genai, ollama) or
``httpx2.MockTransport`` (openai, anthropic): it records each JSON request body and answers with a
scripted reply in the vendor's response shape (`openai_reply`, `anthropic_reply`, `gemini_reply`,
`ollama_reply`, or a list of them, one per request). The ``*_client`` helpers build the vendor's own
client, or the LangChain class, over it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

Reply = Callable[[dict[str, Any]], Any]  # a JSON body, or the text of an event stream


class Capture:
    """Records request bodies and answers each with the next scripted reply (the last one repeats)."""

    def __init__(self, httpx_module: Any, *replies: Reply) -> None:
        self.httpx, self.replies, self.bodies = httpx_module, list(replies), []

    def handler(self, request: Any) -> Any:
        body = json.loads(request.content)
        self.bodies.append(body)
        reply = self.replies[min(len(self.bodies), len(self.replies)) - 1](body)
        if isinstance(reply, str):  # a server-sent event stream
            return self.httpx.Response(200, text=reply, headers={"content-type": "text/event-stream"})
        return self.httpx.Response(200, json=reply)

    def client(self) -> Any:
        return self.httpx.Client(transport=self.httpx.MockTransport(self.handler))

    def async_client(self) -> Any:
        async def handler(request: Any) -> Any:
            return self.handler(request)

        return self.httpx.AsyncClient(transport=self.httpx.MockTransport(handler))

    @property
    def body(self) -> dict[str, Any]:
        return self.bodies[-1]


def openai_reply(text: str = "[[5]]", *, reasoning: int = 4, tool_call: dict[str, Any] | None = None,
                 reasoning_text: str | None = None) -> Reply:
    def reply(body: dict[str, Any]) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if reasoning_text is not None:
            message["reasoning"] = reasoning_text
        finish = "stop"
        if tool_call is not None:
            message = {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call-1", "type": "function",
                 "function": {"name": tool_call["name"], "arguments": json.dumps(tool_call["args"])}}]}
            finish = "tool_calls"
        usage = {"prompt_tokens": 3, "completion_tokens": 5 + reasoning, "total_tokens": 8 + reasoning,
                 "completion_tokens_details": {"reasoning_tokens": reasoning}}
        if body.get("stream"):
            chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": body["model"]}
            events = [{**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": text}}]},
                      {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]},
                      {**chunk, "choices": [], "usage": usage}]
            return "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        return {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "message": message, "finish_reason": finish}], "usage": usage}
    return reply


def anthropic_reply(text: str = "5") -> Reply:
    def reply(body: dict[str, Any]) -> dict[str, Any]:
        return {"id": "msg_1", "type": "message", "role": "assistant", "model": body["model"],
                "content": [{"type": "thinking", "thinking": "2+3=5", "signature": "s"},
                            {"type": "text", "text": text}],
                "stop_reason": "end_turn", "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 9}}
    return reply


def gemini_reply(text: str = "5") -> Reply:
    def reply(body: dict[str, Any]) -> dict[str, Any]:
        return {"candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP"}],
                "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 1, "thoughtsTokenCount": 4,
                                  "totalTokenCount": 8}}
    return reply


def ollama_reply(text: str = "5") -> Reply:
    def reply(body: dict[str, Any]) -> dict[str, Any]:
        return {"model": body["model"], "created_at": "2026-01-01T00:00:00Z", "done": True, "done_reason": "stop",
                "message": {"role": "assistant", "content": text, "thinking": "2+3"}, "eval_count": 5,
                "prompt_eval_count": 3}
    return reply


# -- LangChain classes over a Capture ---------------------------------------------------------------


def chat_openai(model: str, *replies: Reply, **kwargs: Any) -> tuple[Any, Capture]:
    import httpx2
    from langchain_openai import ChatOpenAI

    capture = Capture(httpx2, *(replies or (openai_reply(),)))
    kwargs.setdefault("api_key", "k")
    return ChatOpenAI(model=model, http_client=capture.client(), http_async_client=capture.async_client(),
                      max_retries=0, **kwargs), capture


def chat_anthropic(model: str, *replies: Reply, **kwargs: Any) -> tuple[Any, Capture]:
    import anthropic
    import httpx2
    from langchain_anthropic import ChatAnthropic

    capture = Capture(httpx2, *(replies or (anthropic_reply(),)))
    llm = ChatAnthropic(model=model, api_key="k", max_retries=0, **kwargs)
    # the SDK's transport hook: ChatAnthropic builds its client lazily (a cached property) and takes none
    llm.__dict__["_client"] = anthropic.Client(api_key="k", http_client=capture.client(), max_retries=0, timeout=60)
    return llm, capture


def chat_gemini(model: str, *replies: Reply, **kwargs: Any) -> tuple[Any, Capture]:
    import httpx
    from google import genai
    from langchain_google_genai import ChatGoogleGenerativeAI

    capture = Capture(httpx, *(replies or (gemini_reply(),)))
    llm = ChatGoogleGenerativeAI(model=model, api_key="k", **kwargs)
    llm.client = genai.Client(api_key="k", http_options=genai.types.HttpOptions(httpx_client=capture.client()))
    return llm, capture


def chat_ollama(model: str, *replies: Reply, **kwargs: Any) -> tuple[Any, Capture]:
    import httpx
    from langchain_ollama import ChatOllama

    capture = Capture(httpx, *(replies or (ollama_reply(),)))
    transport = httpx.MockTransport(capture.handler)
    return ChatOllama(model=model, base_url="http://ollama.invalid", client_kwargs={"transport": transport},
                      **kwargs), capture
