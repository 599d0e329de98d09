"""`ServeTurn`: how one chat request decodes (tools, structured output, thinking) and how its reply reads.

Built once per request from its checked `GenerationRequest`; the app asks it for the conversation,
the decoding settings and fresh decoding rules, and the response shapes (`serve.responses.Shape`)
ask it how to read the generated text. The tool and structured-output logic is the backend's
`backends.hf.tool_turns.ToolTurn` (shared with `ChatTaleHF` and `TaleHFLLM`); this module only
decides the server's part:

* **When the output is held to a schema while decoding** (``constrain``, the server's setting):
  ``"auto"`` (default) constrains what OpenAI-compatible engines constrain: a ``response_format``
  of ``json_object`` or ``json_schema``, a ``tool_choice`` that requires a call (``"required"`` or a
  named function), and any request whose tools or schema say ``"strict": true`` (with
  ``tool_choice="auto"`` the reply is then a valid call or plain text). ``"always"`` also constrains
  ``"auto"`` turns without ``strict``; ``"never"`` constrains nothing (``strict`` is refused). A
  schema that the constraint cannot compile is a 400 naming it.
* **The thinking budget** on a model whose chat template has a thinking block: ``thinking_token_budget``
  as given, or ``reasoning_effort`` through `core.thinking.ThinkingPolicy.budget_for` (``none`` is 0:
  the block closes at once; ``minimal`` 256, ``low`` 2048, ``medium`` 8192, ``high`` 32768, ``xhigh``
  65536; ``max`` unlimited), always within the request's output cap and the answer's reserve. TALE's
  ``tale_budget`` sets it too (`serve.tale`). On a model without a thinking block a thinking budget
  is refused (422), and ``reasoning_effort: "none"`` is accepted as what it already is.
* **Reading the reply**: text, or text and OpenAI ``tool_calls`` read by `core.tools.ToolStreamParser`
  (plain responses too, so that they equal their streams; a call that does not parse is still
  returned with its ``arguments`` as written, as OpenAI returns arguments that are not valid JSON), and
  the thinking text apart under both names clients read, ``reasoning`` and ``reasoning_content``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from ..backends.hf.settings import CallSettings
from ..backends.hf.tool_turns import ToolTurn
from ..core.errors import SchemaError, TaleError
from ..core.generation import Generation
from ..core.thinking import ThinkingPolicy
from ..core.tools import ToolStreamDelta, ToolStreamParser
from .errors import APIError, bad_request, unsupported
from .params import GenerationRequest

__all__ = ["CONSTRAIN_MODES", "ServeTurn", "assemble", "finish_reason", "tool_delta"]

#: When the server holds an output to its schema while decoding (see the module docstring).
CONSTRAIN_MODES = ("auto", "always", "never")
ConstrainMode = Literal["auto", "always", "never"]


def _constrained(req: GenerationRequest, mode: str) -> bool:
    choice = req.tool_choice
    offered = choice is not None and choice.mode != "none"
    if req.response_format is None and not offered:
        return False
    if mode == "never":
        if req.strict:
            raise unsupported("strict", "this server holds no output to a schema (it runs with --constrain never); "
                                        "drop 'strict' or ask the operator for --constrain auto")
        return False
    return mode == "always" or req.strict or req.response_format is not None or (offered and choice.required)


def _check_compiles(req: GenerationRequest, turn: ToolTurn) -> None:
    """Compile each schema the turn is held to, so a schema the constraint cannot enforce is a 400 naming it."""
    from ..backends.constraints import validate_json_schema

    if req.response_format is not None:
        schema = req.response_format.get("json_schema", {}).get("schema")
        where = ["response_format.json_schema.schema"] if schema is not None else []
        schemas = [schema] if schema is not None else []
    else:
        allowed = [t for t in turn.tools if turn.choice.name is None or t.name == turn.choice.name]
        schemas = [dict(t.parameters) for t in allowed]
        where = [f"tools[{[t.name for t in turn.tools].index(t.name)}].function.parameters" for t in allowed]
    for schema, name in zip(schemas, where, strict=True):
        try:
            validate_json_schema(schema, where=name)
        except SchemaError as exc:
            raise bad_request(str(exc), param=name) from None


@dataclass(frozen=True, slots=True, kw_only=True)
class ServeTurn:
    """One chat request's decoding and reading.

    Attributes:
        conversation: The conversation the backend encodes (tool turns as plain turns, the tool prompt
            or schema in the system turn).
        tool_turn: The backend's `ToolTurn`, or None when the request has no tools or response format.
        thinking_budget: Thinking tokens allowed, or None (no budget, or no thinking block).
        template_kwargs: Extra chat-template arguments (the client's, and the tools for a template that
            renders them), or None.
        thinks: The served model's chat template has a thinking block.
        include_reasoning: Return the thinking text.
    """

    conversation: list[dict[str, str]]
    tool_turn: ToolTurn | None = None
    thinking_budget: int | None = None
    template_kwargs: dict[str, Any] | None = None
    thinks: bool = False
    include_reasoning: bool = True

    @classmethod
    def for_request(cls, generator: Any, req: GenerationRequest, *, constrain: ConstrainMode = "auto",
                    policy: ThinkingPolicy | None = None) -> ServeTurn:
        """The turn of ``req`` on ``generator`` (an `HFGenerator`).

        Raises:
            APIError: 400 for a schema the constraint cannot compile, 422 for a thinking setting the model
                cannot honour, ``strict`` under ``constrain="never"``, or a missing constraint library.
        """
        thinks = req.kind == "chat" and generator.thinking_markers is not None
        budget = None
        asked = req.thinking_asked
        if asked is not None and not thinks and req.reasoning_effort != "none":
            raise unsupported(asked, f"{asked} needs a model whose chat template has a thinking block, and "
                                     f"{generator.model_name!r} has none; drop {asked}")
        if thinks:
            budget = req.thinking_token_budget if asked == "thinking_token_budget" else \
                (policy or ThinkingPolicy()).budget_for(req.reasoning_effort) if asked else None
        tool_turn = None
        if req.response_format is not None or req.tool_choice is not None:
            held = _constrained(req, constrain)
            try:
                tool_turn = ToolTurn.for_call(generator, tools=req.tools, tool_choice=req.tool_choice,
                                              response_format=req.response_format, constrain=held)
                if held:
                    _check_compiles(req, tool_turn)
            except APIError:
                raise
            except ImportError as exc:
                field = "response_format" if req.response_format is not None else "tools"
                raise unsupported(field, f"holding {field} to its schema needs constrained decoding: {exc}") from None
            except TaleError as exc:  # the params already checked the schemas and the choice
                raise bad_request(str(exc), param="tools" if req.response_format is None else "response_format") \
                    from None
        kwargs = dict(req.chat_template_kwargs or {})
        if tool_turn is not None and tool_turn.template_tools is not None:
            kwargs["tools"] = tool_turn.template_tools
        conversation = (tool_turn or ToolTurn()).conversation(req.messages)
        return cls(conversation=conversation, tool_turn=tool_turn, thinking_budget=budget,
                   template_kwargs=kwargs or None, thinks=thinks, include_reasoning=req.include_reasoning)

    def with_plan(self, messages: list[dict[str, Any]], thinking_budget: int | None) -> ServeTurn:
        """The same turn for TALE's rewritten ``messages`` and, when the budget went to the thinking block,
        its thinking budget (`serve.tale.TalePlan`)."""
        conversation = (self.tool_turn or ToolTurn()).conversation(messages)
        budget = self.thinking_budget if thinking_budget is None else thinking_budget
        return dataclasses.replace(self, conversation=conversation, thinking_budget=budget)

    @property
    def holds_json(self) -> bool:
        """Whether the reply is held to a schema or may be a tool call: no token budget may cut it."""
        return self.tool_turn is not None and (self.tool_turn.schema is not None or self.tool_turn.parses_calls)

    def answer_rules(self, generator: Any, cap: int) -> list[Any]:
        """Fresh decoding rules for one answer (the schema constraint, closing its document before ``cap``)."""
        if self.tool_turn is None:
            return []
        return self.tool_turn.rules(generator, CallSettings(max_tokens=cap))

    def decoding(self) -> dict[str, Any]:
        """The thinking budget and template arguments, as the batchers' keyword arguments."""
        return {"thinking_budget": self.thinking_budget, "chat_template_kwargs": self.template_kwargs}

    # -- reading the reply ------------------------------------------------------------------------------

    @property
    def returns_reasoning(self) -> bool:
        """Whether replies carry the thinking text (a model that thinks, unless ``include_reasoning: false``)."""
        return self.thinks and self.include_reasoning

    def reasoning(self, generation: Generation) -> dict[str, Any]:
        """The thinking fields of a message: ``reasoning`` and ``reasoning_content`` (none unless
        `returns_reasoning`)."""
        if not self.returns_reasoning:
            return {}
        return {"reasoning": generation.reasoning, "reasoning_content": generation.reasoning}

    def message(self, generation: Generation) -> tuple[dict[str, Any], str]:
        """The assistant message of a complete response and its finish reason.

        When calls are expected, the text is read by the stream's parser and the message assembled from
        its pieces, as a client assembles a stream: a plain response and a stream of the same text carry
        the same content and the same calls (a call's ``arguments`` as the model wrote them)."""
        parser = self.stream_parser()
        content, calls = generation.text, []
        if parser is not None:
            deltas = parser.feed(generation.text)
            deltas += parser.finish()[0]
            content, calls = assemble(deltas)
        message: dict[str, Any] = {"role": "assistant", "content": content if content.strip() or not calls else None,
                                   "refusal": None, **self.reasoning(generation)}
        if calls:
            message["tool_calls"] = calls
        return message, finish_reason(generation, bool(calls))

    def stream_parser(self) -> ToolStreamParser | None:
        """A parser for the streamed answer, or None when no calls are expected."""
        return self.tool_turn.stream_parser() if self.tool_turn is not None else None


def assemble(deltas: list[ToolStreamDelta]) -> tuple[str, list[dict[str, Any]]]:
    """The text and the OpenAI ``tool_calls`` that stream pieces add up to."""
    content, calls = "", {}
    for delta in deltas:
        if delta.index is None:
            content += delta.content
            continue
        call = calls.setdefault(delta.index, {"id": delta.id, "type": "function",
                                              "function": {"name": delta.name or "", "arguments": ""}})
        call["function"]["arguments"] += delta.arguments
    return content, [calls[i] for i in sorted(calls)]


def finish_reason(generation: Generation, calls: bool) -> str:
    """OpenAI's finish reason: ``tool_calls`` when the reply calls tools and was not cut by the cap."""
    return "tool_calls" if calls and generation.finish_reason == "stop" else generation.finish_reason


def tool_delta(delta: ToolStreamDelta) -> dict[str, Any]:
    """A streamed tool-call piece in OpenAI's ``delta.tool_calls`` form."""
    item: dict[str, Any] = {"index": delta.index}
    function: dict[str, Any] = {"arguments": delta.arguments}
    if delta.id is not None:
        item.update(id=delta.id, type="function")
        function = {"name": delta.name or "", **function}
    item["function"] = function
    return item
