"""TALE in an LCEL chain on the embedded model: ``prompt | TaleRunnable(llm) | parser``.

    python examples/lcel_chain.py

Runs offline on CPU with the embedded SmolLM2-135M-Instruct (``ChatTaleHF()``; the first run
converts it into your cache). The budget is estimated by the same model with the paper's zero-shot
prompt, clamped by the `BudgetPolicy`, written into the last human message, and the answer is
capped at budget + answer reserve tokens. A 135M model is a weak estimator and a weak reasoner:
the point here is the plumbing, not the answers.
"""

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from tale_integrations import BudgetPolicy
from tale_integrations.langchain import ChatTaleHF, TaleRunnable

QUESTIONS = [
    "Tom has 3 apples and buys 4 more. How many apples does he have?",
    "A pen costs $2. How much do 5 pens cost?",
]


def main() -> None:
    llm = ChatTaleHF()  # the embedded model; weights load on the first call
    tale = TaleRunnable(llm, policy=BudgetPolicy(min_budget=20, max_budget=128), answer_reserve=32)
    prompt = ChatPromptTemplate.from_messages(
        [("system", "You are a careful math tutor."), ("human", "{question}")]
    )

    # The whole message, to see what TALE did.
    for question in QUESTIONS:
        reply = (prompt | tale).invoke({"question": question})
        t = reply.response_metadata["tale"]
        print(f"Q: {question}")
        print(f"  budget {t['budget']} (raw {t['budget_raw']}, {t['budget_adjusted'] or 'as estimated'}), "
              f"hard cap {t['max_tokens']}, repaired: {t['repaired']}")
        print(f"  tokens: estimator {t['estimator_usage']['total_tokens']}, answer "
              f"{t['answer_usage']['output_tokens']} out, all calls {t['total_usage']['total_tokens']}")
        print(f"  A: {reply.content.strip()}\n")

    # Text only, streamed: the budget is known before the first answer token arrives.
    chain = prompt | tale | StrOutputParser()
    print(f"Q: {QUESTIONS[0]}\nA (streamed): ", end="", flush=True)
    for piece in chain.stream({"question": QUESTIONS[0]}):
        print(piece, end="", flush=True)
    print()


if __name__ == "__main__":
    main()
