"""The same LCEL chain with ``ChatOpenAI`` against any OpenAI-compatible endpoint.

    export OPENAI_BASE_URL=http://localhost:8000/v1   # e.g. `tale serve`; omit for api.openai.com
    export OPENAI_API_KEY=...                         # any non-empty string for a local server
    export OPENAI_MODEL=gpt-4o-mini                   # the model name the server knows
    python examples/lcel_chat_openai.py

Needs the ``langchain`` and ``openai`` extras plus ``langchain-openai``. ``tale serve`` serves the
embedded model at ``http://localhost:8000/v1`` (any model name and API key are accepted there).
The budget is estimated by the same model (two requests per question, as in the paper); the
answer request carries ``max_completion_tokens`` = budget + answer reserve. ``batch`` sends the
estimator requests concurrently, then the answer requests.
"""

import os
import sys

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from tale_integrations.langchain import TaleRunnable

QUESTIONS = [
    "A train travels 60 km per hour for 2.5 hours. How far does it go?",
    "Sara had 24 stickers, gave a third to her brother and bought 5 more. How many does she have now?",
]


def main() -> None:
    try:
        from langchain_openai import ChatOpenAI
    except ImportError:
        sys.exit('this example needs langchain-openai: pip install langchain-openai "tale-integrations[langchain]"')
    if not os.environ.get("OPENAI_API_KEY"):
        sys.exit("set OPENAI_API_KEY (any non-empty string for a local server) and, for a local server, "
                 "OPENAI_BASE_URL, e.g. http://localhost:8000/v1 for `tale serve`")
    llm = ChatOpenAI(model=os.environ.get("OPENAI_MODEL", "gpt-4o-mini"), temperature=0,
                     base_url=os.environ.get("OPENAI_BASE_URL"), max_retries=2, timeout=300)
    tale = TaleRunnable(llm)
    prompt = ChatPromptTemplate.from_messages(
        [("system", "Answer the question. End with the final answer."), ("human", "{question}")]
    )

    replies = (prompt | tale).batch([{"question": q} for q in QUESTIONS])
    for question, reply in zip(QUESTIONS, replies):
        t = reply.response_metadata["tale"]
        total = t["total_usage"] or {}
        print(f"Q: {question}")
        print(f"  budget {t['budget']} ({t['budget_source']}), cap {t['max_tokens']}, "
              f"answer tokens {(t['answer_usage'] or {}).get('output_tokens')}, "
              f"all tokens {total.get('total_tokens')}, repaired: {t['repaired']}")
        print(f"  A: {reply.content.strip()}\n")

    print("Streamed: ", end="", flush=True)
    for piece in (prompt | tale | StrOutputParser()).stream({"question": QUESTIONS[0]}):
        print(piece, end="", flush=True)
    print()


if __name__ == "__main__":
    main()
