"""``reft serve``: one frozen base model, many ReFT adapters, one continuously batched running batch.

* :mod:`reft.serve.engine`: the only module that calls the model (prefill with per-row adapters, decode steps,
  KV-cache surgery, adapter loading);
* :mod:`reft.serve.scheduler`: the batching loop that owns the model (continuous batching, mixed adapters);
* :mod:`reft.serve.app`: the OpenAI-compatible FastAPI application and the playground page.

The library (``reft.*`` outside this package) never imports the server. See ``docs/serve.md``.
"""
