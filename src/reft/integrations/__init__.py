"""Integrations with the tools ReFT users already train with; each module needs its own extra.

* :mod:`reft.integrations.trl`: ``ReftSFTTrainer`` / ``ReftDPOTrainer`` (``pip install 'reft[trl]'``).
"""
