"""An agent with one tool and TALE's budget middleware (``langchain.agents.create_agent``).

    export OPENAI_BASE_URL=...      # any OpenAI-compatible endpoint whose model can CALL TOOLS
    export OPENAI_API_KEY=...
    export OPENAI_MODEL=gpt-4o-mini
    python examples/agent_with_middleware.py

Requirement: a chat model with tool calling. This example uses ``ChatOpenAI`` against an
OpenAI-compatible URL (the OpenAI API, or a local server with tool support such as vLLM or Ollama's
``/v1``); ``examples/agent_local_langchain.py`` runs the same kind of agent offline on the embedded
model (`ChatTaleHF` with its tool calls held to their schema).

What to look at in the output: the saved conversation holds the user's own words (the budget went
into the model requests only), and ``tale_budgets`` has one record per model call: the turn's
first call estimated the budget, the call after the tool result reused it.
"""

import os
import sys

from langchain.agents import create_agent
from langchain_core.messages import HumanMessage
from langchain_core.tools import tool

from tale_integrations.langchain import TaleBudgetMiddleware


@tool
def multiply(a: float, b: float) -> float:
    """Multiply two numbers."""
    return a * b


def main() -> None:
    try:
        from langchain_openai import ChatOpenAI
    except ImportError:
        sys.exit('this example needs langchain-openai: pip install langchain-openai "tale-integrations[langchain]"')
    if not os.environ.get("OPENAI_API_KEY"):
        sys.exit("set OPENAI_API_KEY (and OPENAI_BASE_URL for a server other than api.openai.com); "
                 "the model must support tool calling")
    llm = ChatOpenAI(model=os.environ.get("OPENAI_MODEL", "gpt-4o-mini"), temperature=0,
                     base_url=os.environ.get("OPENAI_BASE_URL"), max_retries=2, timeout=300)
    agent = create_agent(
        llm, tools=[multiply], system_prompt="Use the multiply tool for every multiplication.",
        middleware=[TaleBudgetMiddleware()],  # zero-shot budget on the agent's own model
    )
    state = agent.invoke({"messages": [HumanMessage("A box holds 12 eggs. How many eggs are in 37 boxes?")]})

    for message in state["messages"]:
        calls = getattr(message, "tool_calls", None)
        text = str(message.content).strip() or (f"[tool call: {calls[0]['name']} {calls[0]['args']}]" if calls else "")
        print(f"{type(message).__name__:>12}: {text}")
    print()
    for record in state.get("tale_budgets", []):
        usage = record["usage"] or {}
        how = "estimated" if record["estimated"] else "reused"
        print(f"budget {record['budget']} ({how}, {record['estimator']}), model output tokens {usage.get('output_tokens')}")


if __name__ == "__main__":
    main()
