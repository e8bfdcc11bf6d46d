"""``reft generate``: complete prompts with a trained adapter (or the bare model)."""

from __future__ import annotations

import argparse
import json
import sys

from .common import add_model_args, dtype_of, read_jsonl

EPILOG = """examples:
  reft generate --adapter runs/demo/adapter --prompt "Extract the city: Ana moved to Lima."
  reft generate --adapter runs/demo/adapter --prompts heldout.jsonl --out answers.jsonl --batch-size 16
  reft generate --prompt "What is the capital of France?"            # the bare model, no adapter

Interventions act on the prompt positions during prefill; generated tokens see them through the KV cache.
"""


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="generate with an adapter", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--adapter", default=None, help="adapter folder from 'reft train' (default: bare model)")
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument("--prompts", default=None, help="JSONL file with a 'prompt' field per line")
    p.add_argument("--out", default=None, help="write JSONL {prompt, output} here (default: stdout)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="(default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="(default: %(default)s)")
    p.add_argument("--num-beams", type=int, default=1, help="beam search width (default: greedy)")
    p.add_argument("--temperature", type=float, default=None, help="sample at this temperature (default: greedy)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..generation import generate_texts, render_chat
    from ..harness.models import load_model
    from ..save_load import load_adapter

    prompts = list(args.prompt)
    if args.prompts:
        prompts += [r["prompt"] for r in read_jsonl(args.prompts, ("prompt",))]
    if not prompts:
        raise ValueError("no prompts: give --prompt TEXT or --prompts FILE.jsonl")
    model, tokenizer = load_model(args.model, dtype=dtype_of(args.dtype))
    if args.adapter:
        model = load_adapter(model, args.adapter)
    texts = [render_chat(tokenizer, p) if args.chat_template else p for p in prompts]
    kwargs = {"num_beams": args.num_beams}
    if args.temperature:
        kwargs |= {"do_sample": True, "temperature": args.temperature}
    outputs = generate_texts(model, tokenizer, texts, batch_size=args.batch_size,
                             max_new_tokens=args.max_new_tokens, **kwargs)
    sink = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
    try:
        for prompt, output in zip(prompts, outputs):
            sink.write(json.dumps({"prompt": prompt, "output": output}, ensure_ascii=False) + "\n")
    finally:
        if args.out:
            sink.close()
    return 0
