"""``reft serve``: an OpenAI-compatible server for one base model and many ReFT adapters (continuous batching)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .common import UserError, add_base_args, check_model, load_base, positive_float, positive_int, require_extra

EPILOG = """examples:
  reft serve                                          # the embedded SmolLM2, bare, on 127.0.0.1:8000
  reft serve --adapter demo=runs/demo/adapter         # + an adapter: request model="demo"
  reft serve --adapter a=runs/a/adapter --adapter b=runs/b/adapter --port 8001
  reft serve --model path/to/hf-model --served-model-name my-model

Endpoints: POST /v1/completions, POST /v1/chat/completions, GET /v1/models, POST /v1/load_adapter,
POST /v1/unload_adapter, GET /health, and a playground at http://HOST:PORT/. 'model' in a request picks the
adapter; the base model's id (see GET /v1/models) runs the bare model. Requests with different adapters share
one running batch. Stop with Ctrl-C or SIGTERM: in-flight requests get --shutdown-timeout seconds to finish.
"""


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve adapters over an OpenAI-compatible HTTP API", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_base_args(p)
    p.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR",
                   help="load the adapter folder DIR as model NAME (repeatable)")
    p.add_argument("--served-model-name", default=None,
                   help="the base model's id in the API (default: the model's name, e.g. SmolLM2-135M-Instruct)")
    p.add_argument("--host", default="127.0.0.1", help="(default: %(default)s)")
    p.add_argument("--port", type=positive_int, default=8000, help="(default: %(default)s)")
    g = p.add_argument_group("batching and limits")
    g.add_argument("--max-batch", type=positive_int, default=64, help="most running rows (choices) at once (default: "
                                                              "%(default)s)")
    g.add_argument("--max-queue", type=positive_int, default=256,
                   help="most waiting requests; more get 429 (default: %(default)s)")
    g.add_argument("--max-batch-tokens", type=positive_int, default=65536,
                   help="running rows × their longest possible length stays below this (KV-cache memory) "
                        "(default: %(default)s)")
    g.add_argument("--max-prefill-tokens", type=positive_int, default=2048,
                   help="padded prompt tokens prefilled in one step (default: %(default)s)")
    g.add_argument("--request-timeout", type=positive_float, default=600.0,
                   help="seconds a request may wait and run (default: %(default)s)")
    g.add_argument("--default-max-tokens", type=positive_int, default=1024,
                   help="chat max_tokens when a request gives none (default: %(default)s; completions: 16)")
    g.add_argument("--shutdown-timeout", type=positive_float, default=30.0,
                   help="on shutdown, seconds in-flight requests get to finish (default: %(default)s)")
    g.add_argument("--batching", default="mixed", choices=["mixed", "grouped", "subbatch"],
                   help="'mixed' (one running batch for all adapters); the others are the benchmark's baselines "
                        "(default: %(default)s)")
    g.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-adapter-loading", dest="adapter_loading", action="store_false",
                   help="refuse POST /v1/load_adapter and /v1/unload_adapter (403)")
    p.add_argument("--api-key", default=os.environ.get("REFT_API_KEY") or None,
                   help="require 'Authorization: Bearer KEY' on every /v1 route, as OpenAI (default: $REFT_API_KEY; "
                        "none: open)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="(default: %(default)s)")
    p.set_defaults(run=run)


def parse_adapter_args(items: list[str]) -> list[tuple[str, str]]:
    """``["demo=runs/demo/adapter"]`` → ``[("demo", "runs/demo/adapter")]``."""
    out = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise UserError(f"--adapter {item!r}: write NAME=DIR, e.g. --adapter demo=runs/demo/adapter")
        out.append((name.strip(), path.strip()))
    return out


def run(args: argparse.Namespace) -> int:
    adapters = parse_adapter_args(args.adapter)
    check_model(args.model, causal=True, command="reft serve")
    require_extra("serve", ("fastapi", "uvicorn", "prometheus_client"), "reft serve")
    import torch
    import uvicorn

    from ..harness.models import ALIASES
    from ..serve.app import create_app
    from ..serve.engine import Engine
    from ..serve.scheduler import Scheduler

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    log = logging.getLogger("reft.serve")
    model, tokenizer = load_base(args)
    model_id = args.served_model_name or ALIASES.get(args.model) or str(model.config._name_or_path or args.model)
    engine = Engine(model, tokenizer, model_id, aliases=(args.model,))
    for name, path in adapters:
        info = engine.load_adapter(name, path)
        log.info("loaded adapter %s from %s (positions %s, %d parameters) in %.3f s", name, path, info.positions,
                 info.parameters, info.load_seconds)
    scheduler = Scheduler(engine, max_batch=args.max_batch, max_queue=args.max_queue,
                          max_batch_tokens=args.max_batch_tokens, max_prefill_tokens=args.max_prefill_tokens,
                          policy=args.batching)
    app = create_app(engine, scheduler, request_timeout=args.request_timeout,
                     default_max_tokens=args.default_max_tokens, allow_adapter_loading=args.adapter_loading,
                     shutdown_timeout=args.shutdown_timeout, api_key=args.api_key)
    if args.host not in ("127.0.0.1", "localhost", "::1") and args.adapter_loading and not args.api_key:
        log.warning("listening on %s with run-time adapter loading on: any client that reaches it can load "
                    "adapter folders from this machine's disk (refuse with --no-adapter-loading, or set --api-key)",
                    args.host)
    log.info("serving %s with %d adapter(s) on http://%s:%d (playground at /)", model_id, len(adapters), args.host,
             args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False,
                timeout_graceful_shutdown=args.shutdown_timeout, log_config=None)
    return 0
