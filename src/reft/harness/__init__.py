"""The paper harness: task loaders and metrics, evaluation, the suite runner, the LoRA baseline, the embedded models,
and the training recipe with its loss curve. It depends on the library (:mod:`reft`); the library never imports it.
"""
