"""TALE-EP with the core API on the embedded model: estimate, answer, compare with vanilla CoT.

    python examples/core_pipeline.py
"""

from tale_integrations import TalePipeline
from tale_integrations.backends.hf import HFGenerator

QUESTIONS = [
    "Tom has 3 apples and buys 4 more. How many apples does he have?",
    "A pen costs $2. How much do 5 pens cost?",
]


def main() -> None:
    model = HFGenerator(progress=print)
    tale = TalePipeline(model, format="gsm8k", max_tokens=256)
    vanilla = TalePipeline(model, mode="vanilla", format="gsm8k", max_tokens=256)
    for t, v in zip(tale.batch(QUESTIONS), vanilla.batch(QUESTIONS)):
        print(f"Q: {t.question}")
        print(f"  TALE-EP  budget={t.budget.tokens} ({t.budget.source})  answer={t.answer}  "
              f"output tokens={t.usage.output_tokens}  all tokens={t.total_usage.total_tokens}")
        print(f"  vanilla  answer={v.answer}  output tokens={v.usage.output_tokens}  all tokens={v.total_usage.total_tokens}")


if __name__ == "__main__":
    main()
