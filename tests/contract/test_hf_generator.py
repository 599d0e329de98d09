"""`HFGenerator` against the `Generator` contract, on the tiny random llama (tests/tiny_models.py):
greedy decoding of random weights writes varied text, and the model's own tokenizer counts exactly."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from contract.generator_contract import TinyModelContract  # noqa: E402


class TestHFGenerator(TinyModelContract):
    @pytest.fixture()
    def generator(self, tiny_generator):
        return tiny_generator
