"""Model backends: each one a `Generator` over a model library.

Import them from their modules, which need their extras:
``from tale_integrations.backends.hf import HFGenerator`` (``pip install "tale-integrations[hf]"``).
"""
