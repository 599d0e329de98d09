"""`ToolTurn`: how one call of `HFGenerator` with tools or structured output runs, written once for
`ChatTaleHF` (LangChain) and `TaleHFLLM` (LlamaIndex).

Framework-free: it takes plain ``{"role", "content"}`` turns (an assistant turn may carry
``"tool_calls"``, a ``"tool"`` turn a ``"name"``) and OpenAI-style tool dicts; each adapter only
translates its own message, tool and reply types. The logic is the core's (``core/tools.py``: tool
specs, tool choice, the generic tool prompt, parsing) and the backend's (``backends/constraints.py``:
the JSON-schema constraint).

* **Prompt.** When the model's chat template renders tools, they go to the template; otherwise the
  generic tool prompt (``core/prompts.py``) is added to the system turn. Tool calls and tool results
  of the history become plain turns (`core.tools.plain_turns`). A structured-output turn gets the
  schema (or, in JSON mode, the request for a JSON object) in its system turn.
* **Constraint** (``strict=True``, or the model's ``constrain`` field): a turn that must call a tool
  is held to `core.tools.tool_call_schema`; ``tool_choice="auto"`` to "a tool call or plain text not
  starting with ``{``"; structured output to its schema (JSON mode: any JSON object). Such a turn
  gets no token budget, so budget enforcement can never cut its JSON (the enforcer forces text the
  schema does not allow).
* **Reply.** The answer's text is split into text, tool calls and invalid calls (`core.tools.ToolReply`);
  a stream goes through a `core.tools.ToolStreamParser`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ...core.errors import TaleTypeError, TaleValueError
from ...core.schemas import check_json_schema, closed_schema
from ...core.tools import (
    ToolChoice,
    ToolReply,
    ToolSpec,
    ToolStreamParser,
    parse_tool_calls,
    plain_turns,
    resolve_tool_choice,
    structured_output_prompt,
    template_renders_tools,
    tool_call_schema,
    tool_prompt,
    tool_specs,
    with_system_text,
)

if TYPE_CHECKING:
    from .settings import CallSettings

__all__ = ["TOOL_KWARGS", "ToolTurn", "openai_tools"]

#: The per-call keywords of a turn with tools or structured output (each adapter pops them from a call).
TOOL_KWARGS = ("tools", "tool_choice", "strict", "response_format", "parallel_tool_calls")


def openai_tools(tools: Sequence[Any], convert: Callable[[int, Any], Any], *, kinds: str,
                 where: str = "tools") -> list[Any]:
    """A framework's tools as OpenAI-style tool schemas: ``convert(i, tool)`` translates one (or
    passes a dict through for `core.tools.tool_specs` to check).

    Raises:
        TaleTypeError: ``tools`` is not a list (the message names ``kinds``, the tools accepted).
    """
    if isinstance(tools, (str, bytes, Mapping)) or not isinstance(tools, Sequence):
        raise TaleTypeError(f"{where} must be a list of tools ({kinds}), got {tools!r}")
    return [convert(i, tool) for i, tool in enumerate(tools)]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ToolTurn:
    """How one call with tools or structured output runs.

    Attributes:
        tools: The offered tools (empty for structured output).
        choice: The resolved tool choice.
        schema: The JSON Schema the output is held to while decoding, or None (not constrained).
        text_alternative: The constraint also allows plain text (``tool_choice="auto"``).
        system_text: Text added to the system turn (the generic tool prompt, the schema), or None.
        template_tools: Tools for a chat template that renders them, or None.
    """

    tools: tuple[ToolSpec, ...] = ()
    choice: ToolChoice = ToolChoice(mode="none")
    schema: dict[str, Any] | None = None
    text_alternative: bool = False
    system_text: str | None = None
    template_tools: list[dict[str, Any]] | None = None

    @property
    def parses_calls(self) -> bool:
        return bool(self.tools) and self.choice.mode != "none"

    @classmethod
    def for_call(cls, generator: Any, *, tools: Sequence[Any] | None = None, tool_choice: Any = None,
                 response_format: Any = None, constrain: bool = False) -> ToolTurn:
        """The turn for a call's tools (OpenAI-style dicts or `ToolSpec` values) and tool choice, or
        its ``response_format`` (which wins when both are given).

        Args:
            generator: The `HFGenerator` (its chat template decides where the tools go).
            constrain: Hold the output to its schema while decoding.

        Raises:
            SchemaError: a tool or response schema that is not JSON Schema.
            TaleValueError: a ``tool_choice`` naming a tool that is not offered, a bad ``response_format``.
        """
        if response_format is not None:
            return cls._structured(response_format, constrain)
        specs = tool_specs(tools or ())
        choice = resolve_tool_choice(tool_choice, specs)
        if choice.mode == "none":
            return cls(tools=specs, choice=choice)
        schema = None
        if constrain:
            schema = tool_call_schema(specs, choice if choice.required else ToolChoice(mode="required"))
        renders = renders_tools(generator)
        return cls(tools=specs, choice=choice, schema=schema, text_alternative=constrain and not choice.required,
                   system_text=None if renders else tool_prompt(specs, choice),
                   template_tools=[s.to_dict() for s in specs] if renders else None)

    @classmethod
    def _structured(cls, response_format: Any, constrain: bool) -> ToolTurn:
        if not isinstance(response_format, Mapping) or response_format.get("type") not in ("json_object",
                                                                                             "json_schema"):
            raise TaleValueError(
                "response_format must be {'type': 'json_object'} or {'type': 'json_schema', 'json_schema': "
                f"{{'schema': ...}}}}, got {response_format!r}"
            )
        schema = None
        if response_format["type"] == "json_schema":
            body = response_format.get("json_schema") or {}
            schema = body.get("schema") if isinstance(body, Mapping) else None
            check_json_schema(schema, "response_format['json_schema']['schema']")
        held = closed_schema(schema) if schema is not None else {"type": "object"}
        return cls(schema=held if constrain else None, system_text=structured_output_prompt(schema))

    # -- what the call sends ----------------------------------------------------------------------------

    def conversation(self, turns: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
        """The backend conversation of plain turns (with ``tool_calls`` / ``tool`` turns): tool turns as
        plain turns, the tool prompt or schema in the system turn."""
        plain = plain_turns(turns)
        return with_system_text(plain, self.system_text) if self.system_text else plain

    def settings(self, settings: CallSettings) -> CallSettings:
        """The call's settings for this turn: no budget when the output is held to a schema; the tools
        for a chat template that renders them."""
        changes: dict[str, Any] = {}
        if self.schema is not None and settings.budget is not None:
            changes["budget"] = None
        if self.template_tools is not None:
            changes["chat_template_kwargs"] = {**(settings.chat_template_kwargs or {}), "tools": self.template_tools}
        return dataclasses.replace(settings, **changes) if changes else settings

    def rules(self, generator: Any, settings: CallSettings) -> list[Any]:
        """The decoding-time rules of the answer: the JSON-schema constraint, if held to one (closing
        the document before the call's cap)."""
        if self.schema is None:
            return []
        from ..constraints import schema_rule

        return [schema_rule(generator, self.schema, max_tokens=settings.max_tokens,
                            text_alternative=self.text_alternative)]

    # -- what comes back ----------------------------------------------------------------------------------

    def reply(self, text: str) -> ToolReply:
        """The answer's text split into text and tool calls (the text unchanged when no calls are expected)."""
        return parse_tool_calls(text, self.tools) if self.parses_calls else ToolReply(content=text)

    def stream_parser(self) -> ToolStreamParser | None:
        """A parser for the streamed answer, or None when no calls are expected."""
        return ToolStreamParser(self.tools) if self.parses_calls else None


def renders_tools(generator: Any) -> bool:
    """Whether ``generator``'s chat template renders the tools it is given (`core.tools.template_renders_tools`)."""
    tokenizer, template = generator.tokenizer, generator.chat_template

    def render(messages: list[dict[str, str]], tools: list[dict[str, Any]]) -> str:
        return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, chat_template=template,
                                             add_generation_prompt=True)

    return template_renders_tools(render)
