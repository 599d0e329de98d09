"""The local Hugging Face transformers backend: `HFGenerator` and its `HFSettings`.

``from tale_integrations.backends.hf import HFGenerator``. One concept per module:

- ``generator.py``: `HFGenerator`, the `Generator` (loading on first use, batching, streaming);
- ``settings.py``: `HFSettings`, every setting validated once, shared with `ChatTaleHF` (LangChain)
  and `TaleHFLLM` (LlamaIndex), and `CallSettings`, one call of those classes;
- ``loading.py``: the public loading API (checkpoint, adapter, device and dtype resolution), which
  ``training`` uses too;
- ``decoding.py``: `BatchDecoder`, one batch through ``model.generate``;
- ``streaming.py``: the token queue and the text deltas of a stream;
- ``fast_path.py``: the fast path's one switch, in front of ``cache.py`` (a cache grown in place,
  shared-prefix prefill) and ``cpu_packing.py`` (oneDNN-packed CPU weights).

Needs the ``hf`` extra: ``pip install "tale-integrations[hf]"``.
"""

from .generator import HFGenerator
from .settings import HFSettings

__all__ = ["HFGenerator", "HFSettings"]
