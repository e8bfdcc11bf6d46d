"""``reft generate``: complete prompts with a trained adapter (or the bare model)."""

from __future__ import annotations

import argparse
import json
import sys

from .common import (
    UserError,
    add_model_args,
    check_model,
    check_output_file,
    load_base,
    located,
    positive_float,
    positive_int,
    read_prompt_rows,
    write_output_file,
)

EPILOG = """examples:
  reft generate --adapter runs/demo/adapter --prompt "Extract the city: Ana moved to Lima."
  reft generate --adapter runs/demo/adapter --prompts heldout.jsonl --out answers.jsonl --batch-size 16
  reft generate --adapter runs/demo/adapter --prompts heldout.csv --out answers.jsonl --overwrite
  reft generate --prompt "What is the capital of France?"            # the bare model, no adapter

--prompts takes JSON Lines, CSV, TSV, Parquet or a datasets folder with a 'prompt' column; each output line
keeps the row's other fields (id, gold, ...) and adds 'output'. --out never replaces --prompts, nor an existing file
unless --overwrite is given.

Interventions act on the prompt positions during prefill; generated tokens see them through the KV cache.
Prompts are built as in training (chat template or plain text, stored in the adapter) unless
--chat-template / --no-chat-template says otherwise (a warning says when that differs from training).
"""


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="generate with an adapter", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p, chat_default="as the adapter was trained; on for the bare model")
    p.add_argument("--adapter", default=None, help="adapter folder from 'reft train' (default: bare model)")
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument("--prompts", default=None,
                   help="file or datasets folder with a 'prompt' field per row (JSONL, CSV, TSV, Parquet)")
    p.add_argument("--out", default=None,
                   help="write JSONL here: each row's fields plus 'output' (default: stdout)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--max-new-tokens", type=positive_int, default=64, help="(default: %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="(default: %(default)s)")
    p.add_argument("--num-beams", type=positive_int, default=1, help="beam search width (default: 1, greedy)")
    p.add_argument("--temperature", type=positive_float, default=None,
                   help="sample at this temperature (default: greedy)")
    p.set_defaults(run=run)


def interrupted(args: argparse.Namespace) -> str:
    """What Ctrl-C leaves."""
    return "nothing was written (the outputs are written when all prompts are done)"


def run(args: argparse.Namespace) -> int:
    from ..data import ExampleError
    from ..generation import format_prompts, generate_texts, resolve_chat_template
    from ..model import load_adapter
    from ..save_load import read_adapter

    prompts = list(args.prompt)
    sources = [f"--prompt #{i + 1}" for i in range(len(prompts))]
    empty = [s for p, s in zip(prompts, sources) if not p.strip()]
    if empty:
        raise UserError(f"{empty[0]} is empty: give some text to complete")
    rows = [{"prompt": p} for p in prompts]
    if args.prompts:
        read, where = read_prompt_rows(args.prompts, "--prompts")
        rows += read
        sources += where
    if not rows:
        raise UserError("no prompts: give --prompt TEXT or --prompts FILE.jsonl")
    check_output_file(args.out, "--out", inputs={"--prompts": args.prompts}, overwrite=args.overwrite)
    check_model(args.model, causal=True, command="reft generate")
    if args.adapter:
        read_adapter(args.adapter)  # a missing, corrupt or diverged adapter fails before the model loads
    model, tokenizer = load_base(args)
    if args.adapter:
        model = load_adapter(model, args.adapter)
    chat_template = resolve_chat_template(model, tokenizer, args.chat_template, default=True)
    texts = format_prompts(tokenizer, [r["prompt"] for r in rows], chat_template)
    kwargs = {"num_beams": args.num_beams}
    if args.temperature is not None:
        kwargs |= {"do_sample": True, "temperature": args.temperature}
    try:
        outputs = generate_texts(model, tokenizer, texts, batch_size=args.batch_size,
                                 max_new_tokens=args.max_new_tokens, **kwargs)
    except ExampleError as e:
        raise located(e, sources) from None
    lines = "".join(json.dumps(row | {"output": o}, ensure_ascii=False, default=str) + "\n"
                    for row, o in zip(rows, outputs))
    if args.out:
        write_output_file(args.out, lines)
    else:
        sys.stdout.write(lines)
    return 0
