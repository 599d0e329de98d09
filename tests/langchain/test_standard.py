"""LangChain's standard chat-model tests (langchain-tests) for `ChatTaleHF` on a tiny local model,
with tool calling and structured output on (``constrain=True``: held to their schema while decoding).

The model is a tiny Llama saved to a temporary folder and loaded through ``model_path``, the same
path users take. It is scripted as a bigram model: each token's embedding is one of a few one-hot
"states" and the layers pass it through unchanged (their output projections are zeroed), so the
output head scores the next token from the previous token alone (`SCRIPT`). Under the JSON-schema
constraint that is enough to answer the suites' tool calls as they expect (``{"input": 3}``, a
non-empty string holding the Chinese and Japanese characters the unicode test looks for, a JSON
object with "setup" and "punchline" keys); what the schema forces the constraint writes. Without
tools it answers ``{"setup": "你好こ", "punchline": "meow"}`` and stops, deterministically.

Standard tests that skip, each for a feature this local text model does not have (none is
overridden or xfailed):

* other modalities: test_image_inputs, test_image_tool_message, test_pdf_inputs,
  test_pdf_tool_message, test_audio_inputs, test_anthropic_inputs: a text-only model.
* test_invoke_with_model_override, test_ainvoke_with_model_override,
  test_stream_with_model_override, test_astream_with_model_override: the model is a set of local
  weights fixed at construction; a per-call ``model=`` raises TypeError (make another ChatTaleHF).
* test_init_from_env: nothing is configured from environment variables.
* test_serdes: not LangChain-serializable (it holds a loaded model).
* test_stream_time: needs VCR cassettes of HTTP traffic; a local model makes no requests.
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("langchain_tests")
torch = pytest.importorskip("torch")

from langchain_tests.integration_tests import ChatModelIntegrationTests  # noqa: E402
from langchain_tests.unit_tests import ChatModelUnitTests  # noqa: E402

from tale_integrations.langchain import ChatTaleHF  # noqa: E402

#: Constructor arguments of hosted-API models that a local model does not take (it forbids unknown
#: arguments, so that a misspelt setting fails instead of being ignored).
REMOTE_ONLY = {"api_key", "timeout", "max_retries"}


#: Tokens added to the tiny tokenizer for the script (each one token).
SETUP, PUNCHLINE, UNICODE, MEOW, CLOSE = '{"setup": "', '", "punchline": "', "你好こ", "meow", '"}'
#: The bigram script: after a token (a key; "" for any other token), the next tokens the model
#: prefers, best first. Where the constraint allows none of them, the allowed token with the lowest
#: id wins (all others score the same), which writes forced JSON byte by byte.
SCRIPT = {
    "": [SETUP, "{", "3", UNICODE],  # an answer opens a JSON object; a number is 3
    '"': [UNICODE, CLOSE],  # a string value holds the unicode test's characters
    SETUP: [UNICODE],
    UNICODE: [PUNCHLINE, CLOSE, '"'],
    PUNCHLINE: [MEOW],
    MEOW: [CLOSE],
    CLOSE: ["<|im_end|>"],
    "3": ["}"],
}


def build_script_folder(folder):
    """Save the tiny tokenizer (with the script's tokens) and a model that decodes `SCRIPT` greedily."""
    from tiny_models import build_ranking_model, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    tokenizer.add_tokens([SETUP, PUNCHLINE, UNICODE, MEOW, CLOSE])
    build_ranking_model(tokenizer, SCRIPT).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def scripted_model_dir(tmp_path_factory):
    return build_script_folder(tmp_path_factory.mktemp("scripted-tools"))


class TinyScriptedModel:
    """What both standard suites share: the class, its parameters and the feature flags."""

    model_dir: str = ""

    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def _model_dir(cls, scripted_model_dir):
        cls.model_dir = str(scripted_model_dir)

    @property
    def chat_model_class(self) -> type[ChatTaleHF]:
        return ChatTaleHF

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model_path": self.model_dir, "device": "cpu", "constrain": True}

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        params = super().standard_chat_model_params  # type: ignore[misc]
        # Room for a tool call written byte by byte (the integration suite sets no max_tokens).
        return {**{k: v for k, v in params.items() if k not in REMOTE_ONLY}, "max_tokens": 128}

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def supports_image_inputs(self) -> bool:
        return False

    @property
    def supports_model_override(self) -> bool:
        return False

    @property
    def returns_usage_metadata(self) -> bool:
        return True


class TestChatTaleHFUnit(TinyScriptedModel, ChatModelUnitTests):
    pass


class TestChatTaleHFIntegration(TinyScriptedModel, ChatModelIntegrationTests):
    pass
