"""Can the embedded model drive an agent? The offline agent examples on 10 simple arithmetic questions.

Side by side, on the same questions and the same loaded SmolLM2-135M-Instruct (greedy, tool calls
held to their schema with ``constrain=True``):

- LangChain ``create_agent(ChatTaleHF(constrain=True), tools=[calculator], middleware=[...])``: the
  model choosing by itself (``TaleBudgetMiddleware`` only), and ``examples/agent_local_langchain.py``
  (its tool policy: call on the turn's first model call, answer without tools after the tool result);
- LlamaIndex ``FunctionAgent(llm=TaleHFLLM(constrain=True))``: the model choosing by itself, the
  first call forced (``initial_tool_choice``), and ``examples/agent_local_llamaindex.py`` (forced
  first call, ``return_direct`` tool);
- the answer turn alone (a right call and its result in the history, ``tool_choice="none"``), as
  each adapter renders that history: the call as the JSON the model writes (``ChatTaleHF``), or as a
  text line ``Tool call (calculator): {...}`` as in a chat without tools (``TaleHFLLM``).

Per question: ``called`` (the model made at least one valid tool call), ``finished`` (the run ended
with a final answer within its step limit), ``correct`` (the final answer is text, neither another
call nor a call written out as ``Tool call (...)``, and its last number is the true value),
``args_right`` (the first call computes the true value), model calls and wall time.

    python benchmarks/agent_tools.py [--json benchmarks/results/agent_tools.json]
    python benchmarks/agent_tools.py --rescore benchmarks/results/agent_tools.json  # the tables again, no model
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import platform
import re
import sys
import time
from pathlib import Path

from tale_integrations.core.prompts import TOOL_CALL_LINE

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
#: (question, the expression a right call computes, the true value)
QUESTIONS = [
    ("What is 12 times 37?", "12 * 37", "444"),
    ("What is 145 plus 289?", "145 + 289", "434"),
    ("What is 1000 minus 373?", "1000 - 373", "627"),
    ("What is 84 divided by 4?", "84 / 4", "21"),
    ("What is 23 * 19?", "23 * 19", "437"),
    ("How much is 56 + 78?", "56 + 78", "134"),
    ("What is 900 - 456?", "900 - 456", "444"),
    ("What is 144 / 12?", "144 / 12", "12"),
    ("What is 15 times 15?", "15 * 15", "225"),
    ("What is 333 + 444?", "333 + 444", "777"),
]
MAX_TOKENS = 64
CALL_LINE = TOOL_CALL_LINE.split("{")[0]  # "Tool call (": how a chat without tools shows an earlier call


def example(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def writes_a_call(text: str) -> bool:
    """Whether a reply is a tool call, as JSON or as the text line a chat without tools shows calls as."""
    return text.lstrip().startswith("{") or CALL_LINE in text


def right_answer(text: str | None, truth: str) -> bool:
    """Whether ``text`` answers in words (it writes no call) and ends on the true value."""
    return text is not None and not writes_a_call(text) and last_number(text) == truth


def last_number(text: str) -> str | None:
    numbers = re.findall(r"-?\d+(?:\.\d+)?", text.replace(",", ""))
    if not numbers:
        return None
    value = float(numbers[-1])
    return str(int(value)) if value == int(value) else numbers[-1]


def outcome(question: tuple, calls: list[dict], answer: str | None, finished: bool, model_calls: int,
            seconds: float, calculate) -> dict:
    _, _, truth = question
    first = calls[0]["args"].get("expression") if calls else None
    try:
        args_right = first is not None and calculate(first) == truth
    except (ValueError, KeyError, ZeroDivisionError):
        args_right = False
    return {"question": question[0], "called": bool(calls), "finished": finished,
            "correct": finished and right_answer(answer, truth), "args_right": args_right,
            "calls": [c["args"] for c in calls], "answer": answer, "model_calls": model_calls,
            "seconds": round(seconds, 2)}


def run_langchain(chat, lc, *, policy: bool) -> list[dict]:
    from langchain_core.messages import AIMessage, HumanMessage

    agent = lc.build_agent(chat, policy=policy)
    rows = []
    for q in QUESTIONS:
        start, finished, messages = time.perf_counter(), False, []
        try:
            state = agent.invoke({"messages": [HumanMessage(q[0])]}, {"recursion_limit": 8})
            messages = state["messages"]
            last = messages[-1]
            finished = isinstance(last, AIMessage) and not last.tool_calls
        except Exception as exc:  # the step limit (GraphRecursionError), or a failed step
            print(f"  {q[0]}: {type(exc).__name__}: {str(exc)[:100]}", file=sys.stderr)
        ais = [m for m in messages if isinstance(m, AIMessage)]
        calls = [c for m in ais for c in m.tool_calls]
        answer = str(messages[-1].content) if finished else None
        rows.append(outcome(q, calls, answer, finished, len(ais), time.perf_counter() - start, lc.calculate))
    return rows


def run_llamaindex(llm, li, *, forced: bool, return_direct: bool) -> list[dict]:
    from llama_index.core.agent.workflow import AgentOutput, ToolCallResult

    agent = li.build_agent(llm, return_direct=return_direct, initial_tool_choice="calculator" if forced else None)

    async def one(question: str) -> tuple[list[dict], str | None, bool, int]:
        handler = agent.run(question, max_iterations=4)
        calls, model_calls = [], 0
        try:
            async for event in handler.stream_events():
                if isinstance(event, ToolCallResult) and not event.tool_output.is_error:
                    calls.append({"args": event.tool_kwargs})
                elif isinstance(event, AgentOutput):
                    model_calls += 1
            return calls, str(await handler), True, model_calls
        except Exception as exc:  # max_iterations reached, or a failed step
            print(f"  {question}: {type(exc).__name__}: {str(exc)[:100]}", file=sys.stderr)
            return calls, None, False, model_calls

    rows = []
    for q in QUESTIONS:
        start = time.perf_counter()
        calls, answer, finished, model_calls = asyncio.run(one(q[0]))
        rows.append(outcome(q, calls, answer, finished, model_calls, time.perf_counter() - start, li.calculate))
    return rows


def answer_turns(chat, llm, lc, li) -> dict[str, list[dict]]:
    """The answer turn alone: a right call and its result in the history, ``tool_choice="none"``."""
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
    from llama_index.core.base.llms.types import ToolCallBlock
    from llama_index.core.llms import ChatMessage

    out: dict[str, list[dict]] = {"json_calls (ChatTaleHF)": [], "text_lines (TaleHFLLM)": []}
    bound = chat.bind_tools([lc.calculator], tool_choice="none")
    tool = li.calculator_tool(return_direct=False)
    for question, expression, truth in QUESTIONS:
        args = {"expression": expression}
        history = [HumanMessage(question), AIMessage("", tool_calls=[{"name": "calculator", "args": args, "id": "c1"}]),
                   ToolMessage(truth, tool_call_id="c1", name="calculator")]
        texts = {"json_calls (ChatTaleHF)": bound.invoke(history).content}
        li_history = [ChatMessage(role="user", content=question),
                      ChatMessage(role="assistant", blocks=[ToolCallBlock(tool_call_id="c1", tool_name="calculator",
                                                                          tool_kwargs=args)]),
                      ChatMessage(role="tool", content=truth, additional_kwargs={"tool_call_id": "c1"})]
        texts["text_lines (TaleHFLLM)"] = llm.chat_with_tools([tool], chat_history=li_history,
                                                             tool_choice="none").message.content
        for name, text in texts.items():
            out[name].append({"question": question, "answer": text, "correct": right_answer(text, truth),
                              "writes_a_call": writes_a_call(text)})
    return out


def summary(rows: list[dict]) -> dict:
    n = len(rows)
    keys = ("called", "finished", "correct", "args_right")
    figures = {k: sum(r[k] for r in rows) for k in keys if k in rows[0]}
    figures["called_and_finished"] = sum(r["called"] and r["finished"] for r in rows) if "called" in rows[0] else None
    figures["n"] = n
    if "seconds" in rows[0]:
        figures["mean_seconds"] = round(sum(r["seconds"] for r in rows) / n, 2)
        figures["mean_model_calls"] = round(sum(r["model_calls"] for r in rows) / n, 2)
    return figures


def print_tables(results: dict, probe: dict) -> None:
    print("| configuration | called | finished | called and finished | correct | call args right | "
          "model calls | s/question |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, result in results.items():
        s = result["summary"]
        print(f"| {name} | {s['called']}/10 | {s['finished']}/10 | {s['called_and_finished']}/10 | {s['correct']}/10 "
              f"| {s['args_right']}/10 | {s['mean_model_calls']} | {s['mean_seconds']} |")
    print("\nThe answer turn alone (a right call and its result in the history, tool_choice='none'):")
    print("| history rendered as | correct answer | writes another call |\n|---|---:|---:|")
    for name, rows in probe.items():
        print(f"| {name} | {sum(r['correct'] for r in rows)}/10 | {sum(r['writes_a_call'] for r in rows)}/10 |")


def rescore(path: str) -> None:
    """Score a results file's answers again with this script's rules (no model runs)."""
    data = json.loads(Path(path).read_text())
    truths = {q: truth for q, _, truth in QUESTIONS}
    for result in data["configurations"].values():
        for row in result["questions"]:
            row["correct"] = row["finished"] and right_answer(row["answer"], truths[row["question"]])
        result["summary"] = {**result["summary"], **summary(result["questions"])}
    for rows in data["answer_turn"].values():
        for row in rows:
            row["correct"] = right_answer(row["answer"], truths[row["question"]])
            row["writes_a_call"] = writes_a_call(row["answer"])
    print_tables(data["configurations"], data["answer_turn"])
    Path(path).write_text(json.dumps(data, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="PATH", help="also write every question's figures here")
    parser.add_argument("--rescore", metavar="PATH", help="score a results file again (no model runs) and rewrite it")
    args = parser.parse_args()
    if args.rescore:
        rescore(args.rescore)
        return

    from tale_integrations.backends.hf import HFGenerator
    from tale_integrations.langchain import ChatTaleHF
    from tale_integrations.llama_index import TaleHFLLM

    lc, li = example("agent_local_langchain"), example("agent_local_llamaindex")
    generator = HFGenerator().load()  # the embedded SmolLM2-135M-Instruct, shared by every configuration
    chat = ChatTaleHF.from_generator(generator, constrain=True, max_tokens=MAX_TOKENS)
    llm = TaleHFLLM.from_generator(generator, constrain=True, max_new_tokens=MAX_TOKENS)

    configs = {
        "langchain: model chooses (TaleBudgetMiddleware only)": lambda: run_langchain(chat, lc, policy=False),
        "langchain: example (call first, then answer)": lambda: run_langchain(chat, lc, policy=True),
        "llamaindex: model chooses": lambda: run_llamaindex(llm, li, forced=False, return_direct=False),
        "llamaindex: first call forced": lambda: run_llamaindex(llm, li, forced=True, return_direct=False),
        "llamaindex: example (first call forced, return_direct)":
            lambda: run_llamaindex(llm, li, forced=True, return_direct=True),
    }
    results, started = {}, time.perf_counter()
    for name, run in configs.items():
        rows = run()
        results[name] = {"summary": summary(rows), "questions": rows}
        print(f"{name}: {results[name]['summary']}", flush=True)
    probe = answer_turns(chat, llm, lc, li)
    total = time.perf_counter() - started
    print_tables(results, probe)
    print(f"\n{len(QUESTIONS)} questions, {total:.0f} s in all ({platform.machine()}, CPU shared with other jobs)")
    if args.json:
        out = {"machine": f"{platform.machine()}, Python {platform.python_version()}", "max_tokens": MAX_TOKENS,
               "configurations": results, "answer_turn": probe, "seconds": round(total, 1)}
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
