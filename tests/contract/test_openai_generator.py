"""`OpenAIGenerator` against the `Generator` contract: the real ``openai`` client talking to a real
`tale serve` on loopback (uvicorn in a thread, the harness of tests/serve/conftest.py) that serves the
tiny random llama. Usage is the server's report, which is the model's own tokenizer count."""

from __future__ import annotations

import pytest

pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("torch")
pytest.importorskip("transformers")

from contract.generator_contract import TinyModelContract  # noqa: E402
from serve.conftest import Running  # noqa: E402

from tale_integrations.backends.hf import HFGenerator  # noqa: E402
from tale_integrations.backends.openai import OpenAIGenerator  # noqa: E402
from tale_integrations.serve import create_app  # noqa: E402


@pytest.fixture(scope="module")
def served(tiny_model, tiny_tokenizer):
    """The base URL of `tale serve` serving the tiny model (one server for the module)."""
    server = Running(create_app(HFGenerator.from_model(tiny_model, tiny_tokenizer, model_name="tiny-llama")))
    yield server.url
    server.stop()


class TestOpenAIGenerator(TinyModelContract):
    @pytest.fixture()
    def generator(self, served):
        # A fresh client per test: the async client's connections belong to one event loop.
        return OpenAIGenerator("tiny-llama", base_url=f"{served}/v1", api_key="unused", max_retries=0)
