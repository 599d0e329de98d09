"""LangChain's standard chat-model tests (langchain-tests) for `ChatTaleHF` on a tiny local model.

The model is a tiny Llama saved to a temporary folder and loaded through ``model_path``, the same
path users take. Its weights are set so that greedy decoding emits the token " 7" at every step
(all embeddings equal, the layers' output projections zeroed, one row of the output head set), so
every answer is non-empty and deterministic, and it survives ``save_pretrained`` unchanged.

Standard tests that skip, each for a feature this local text model does not have (none is
overridden or xfailed; the two unit tests marked "no-op" pass without checking anything):

* tool calling: test_bind_tool_pydantic (unit, no-op), test_tool_calling,
  test_tool_calling_async, test_bind_runnables_as_tools, test_tool_message_histories_string_content,
  test_tool_message_histories_list_content, test_tool_choice, test_tool_calling_with_no_arguments,
  test_tool_message_error_status, test_structured_few_shot_examples, test_agent_loop,
  test_unicode_tool_call_integration: no ``bind_tools`` (local tool calling is out of scope).
* structured output: test_with_structured_output (unit, no-op), test_structured_output,
  test_structured_output_async, test_structured_output_pydantic_2_v1,
  test_structured_output_optional_param, test_json_mode: no ``with_structured_output``, no JSON mode.
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


def build_scripted_folder(folder, like, tokenizer, token_text: str = " 7"):
    """Save a tiny model shaped ``like`` whose greedy decoding emits ``token_text`` forever.

    Every weight that matters is set here, so the result does not depend on the random init.
    """
    model = type(like)(like.config).eval()
    token_id = tokenizer.convert_tokens_to_ids([token_text])[0]
    with torch.no_grad():
        model.model.embed_tokens.weight.fill_(1.0)  # every position sees the same hidden state...
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.zero_()
        model.lm_head.weight[token_id] = 1.0  # ...which scores only this token
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def scripted_model_dir(tmp_path_factory, tiny_model, tiny_tokenizer):
    # Built from fixtures, not `from conftest import ...`: other test folders have a conftest.py too.
    return build_scripted_folder(tmp_path_factory.mktemp("scripted-7"), tiny_model, tiny_tokenizer)


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
        return {"model_path": self.model_dir, "device": "cpu"}

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        params = super().standard_chat_model_params  # type: ignore[misc]
        # Short answers keep the suite fast (the integration suite sets no max_tokens).
        return {**{k: v for k, v in params.items() if k not in REMOTE_ONLY}, "max_tokens": 12}

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_tool_choice(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def supports_json_mode(self) -> bool:
        return False

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
