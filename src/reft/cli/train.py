"""``reft train``: fit interventions on a JSONL of prompt/response pairs."""

from __future__ import annotations

import argparse
import json

from .common import add_model_args, dtype_of, read_jsonl

EPILOG = """examples:
  reft train --data train.jsonl --out runs/demo
  reft train --data train.jsonl --out runs/paper --layers "3;9;18;24" --positions f7+l7 --untied --rank 4
  reft train --data train.jsonl --out runs/d --intervention direft --epochs 5 --lr 1e-3 --save-steps 50 --resume

The data file has one JSON object per line: {"prompt": "...", "response": "..."}. Prompts are wrapped in the
model's chat template unless --no-chat-template. The run folder gets adapter/, loss_curve.png and
train_metrics.json; use the adapter with 'reft generate --adapter runs/demo/adapter'.
"""


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train interventions on prompt/response pairs", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--data", required=True, help="JSONL file with 'prompt' and 'response' fields")
    p.add_argument("--out", required=True, help="run folder (created; an existing adapter is replaced atomically)")
    g = p.add_argument_group("interventions")
    g.add_argument("--layers", default="all", help="'all' or indices like '3;9;18' (default: %(default)s)")
    g.add_argument("--positions", default="f7+l7", help="first/last prompt tokens: f7+l7, l1 (default: %(default)s)")
    g.add_argument("--untied", dest="tied", action="store_false", help="separate interventions for prefix and suffix")
    g.add_argument("--rank", type=int, default=4, help="low rank r (default: %(default)s)")
    g.add_argument("--intervention", default="loreft",
                   help="loreft, noreft, consreft, lobireft, direft, orthodireft (default: %(default)s)")
    g.add_argument("--component", default="block_output",
                   help="block_output, block_input, attention_output, mlp_output (default: %(default)s)")
    g.add_argument("--act", default=None, help="activation on Wh+b, e.g. relu (default: none)")
    g.add_argument("--dropout", type=float, default=0.0, help="dropout on the edit (default: %(default)s)")
    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=float, default=3.0, help="(default: %(default)s)")
    o.add_argument("--lr", type=float, default=4e-3, help="(default: %(default)s)")
    o.add_argument("--batch-size", type=int, default=8, help="(default: %(default)s)")
    o.add_argument("--weight-decay", type=float, default=0.0, help="(default: %(default)s)")
    o.add_argument("--max-length", type=int, default=512, help="tokens per example (default: %(default)s)")
    o.add_argument("--seed", type=int, default=42, help="(default: %(default)s)")
    o.add_argument("--save-steps", type=int, default=None, help="checkpoint every N steps (for --resume)")
    o.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    o.add_argument("--gradient-checkpointing", action="store_true", help="trade compute for activation memory")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..config import ReftConfig
    from ..generation import render_chat
    from ..models import load_model
    from ..recipe import TrainSettings, train_reft

    rows = read_jsonl(args.data, ("prompt", "response"))
    config = ReftConfig(layers=args.layers, positions=args.positions, tied=args.tied, rank=args.rank,
                        intervention=args.intervention, component=args.component, act=args.act, dropout=args.dropout)
    model, tokenizer = load_model(args.model, dtype=dtype_of(args.dtype))
    prompts = [render_chat(tokenizer, r["prompt"]) if args.chat_template else r["prompt"] for r in rows]
    settings = TrainSettings(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                             weight_decay=args.weight_decay, max_length=args.max_length, seed=args.seed,
                             save_steps=args.save_steps, gradient_checkpointing=args.gradient_checkpointing)
    reft_model, metrics = train_reft(model, tokenizer, config, prompts, [r["response"] for r in rows], args.out,
                                     settings, resume=args.resume)
    reft_model.print_trainable_parameters()
    curve = metrics["loss_curve"]
    print(json.dumps({"out": args.out, "examples": metrics["examples"], "first_loss": curve[0][1] if curve else None,
                      "final_loss": curve[-1][1] if curve else None, "train_runtime_s": metrics.get("train_runtime")}))
    return 0
