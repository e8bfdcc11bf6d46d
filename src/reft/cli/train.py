"""``reft train``: fit interventions (or the LoRA baseline) on a JSONL of prompt/response pairs or a suite task."""

from __future__ import annotations

import argparse
import json

from .common import (
    UserError,
    add_model_args,
    check_model,
    dtype_of,
    located,
    nonnegative_float,
    positive_float,
    positive_int,
    probability,
    read_rows,
)

EPILOG = """examples:
  reft train --data train.jsonl --out runs/demo
  reft train --data train.jsonl --out runs/paper --layers "3;9;18;24" --positions f7+l7 --untied --rank 4
  reft train --data train.jsonl --out runs/d --intervention direft --epochs 5 --lr 1e-3 --save-steps 50 --resume
  reft train --task boolq --limit 500 --eval-limit 200 --out runs/boolq --no-chat-template
  reft train --task svamp --train-task math_data_3k --limit 300 --eval-limit 200 --out runs/svamp --method lora
  reft train --task sst2 --model minilm --limit 2000 --positions f1 --rank 1 --lr 2e-3 --out runs/sst2 --seed 1

The data file has one JSON object per line: {"prompt": "...", "response": "..."}. Prompts are wrapped in the
model's chat template unless --no-chat-template; the choice is stored in the adapter, and 'reft generate' and
'reft eval' use it. The run folder gets adapter/, loss_curve.png, train_metrics.json and reft_run.json (what the
run is: config, data, settings); use the adapter with 'reft generate --adapter runs/demo/adapter'.

A run folder belongs to one run: --resume continues its newest checkpoint, and refuses a checkpoint of other data
or settings; without --resume a folder holding checkpoints is refused; a second 'reft train' into the same folder
is refused while the first runs. Ctrl-C says which checkpoint --resume continues from.

With --task (see reft.harness.tasks: boolq, arc_e, math_data_3k, sst2, ...) the run trains on a seeded subset
of --limit training examples, evaluates on --eval-split (first --eval-limit examples) and writes results.json.
GLUE tasks (--model minilm) train a classification head with the interventions, pick the epoch on the seeded dev
half and report on the held-out test half. --method lora trains the LoRA baseline (peft) on the same data.
"""


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train interventions on prompt/response pairs", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p, chat_default="on; GLUE tasks: off")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="JSONL file with 'prompt' and 'response' fields")
    src.add_argument("--task", help="a task of the suite (reft.harness.tasks), e.g. boolq, arc_e, sst2")
    p.add_argument("--method", default=None, choices=["loreft", "direft", "lora"],
                   help="loreft/direft (= --intervention) or the LoRA baseline (default: --intervention)")
    p.add_argument("--out", required=True, help="run folder: new, empty, or this run's (with --resume)")
    g = p.add_argument_group("interventions")
    g.add_argument("--layers", default="all", help="'all' or indices like '3;9;18' (default: %(default)s)")
    g.add_argument("--positions", default=None,
                   help="first/last prompt tokens: f7+l7, l1, f1 (= [CLS]) (default: f1 for GLUE tasks, else f7+l7)")
    g.add_argument("--untied", dest="tied", action="store_false", help="separate interventions for prefix and suffix")
    g.add_argument("--rank", type=positive_int, default=4, help="low rank r (default: %(default)s)")
    g.add_argument("--intervention", default=None,
                   help="loreft, noreft, consreft, lobireft, direft, orthodireft (default: loreft)")
    g.add_argument("--component", default="block_output",
                   help="block_output, block_input, attention_output, mlp_output (default: %(default)s)")
    g.add_argument("--act", default=None, help="activation on Wh+b, e.g. relu (default: none)")
    g.add_argument("--dropout", type=probability, default=0.0, help="dropout on the edit (default: %(default)s)")
    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=positive_float, default=3.0, help="(default: %(default)s)")
    o.add_argument("--lr", type=positive_float, default=None, help="(default: 4e-3 for ReFT, 5e-4 for LoRA)")
    o.add_argument("--batch-size", type=positive_int, default=8, help="(default: %(default)s)")
    o.add_argument("--weight-decay", type=nonnegative_float, default=0.0, help="(default: %(default)s)")
    o.add_argument("--max-length", type=positive_int, default=512, help="tokens per example (default: %(default)s)")
    o.add_argument("--seed", type=int, default=42, help="(default: %(default)s)")
    o.add_argument("--save-steps", type=positive_int, default=None, help="checkpoint every N steps (for --resume)")
    o.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    o.add_argument("--gradient-checkpointing", action="store_true", help="trade compute for activation memory")
    t = p.add_argument_group("tasks (with --task)")
    t.add_argument("--limit", type=positive_int, default=None, help="train on a seeded random subset of N examples")
    t.add_argument("--train-task", default=None, help="train on this task's train split instead (e.g. math_data_3k)")
    t.add_argument("--eval-split", default="test", help="split to report on (default: %(default)s)")
    t.add_argument("--eval-limit", type=positive_int, default=None,
                   help="evaluate the first N examples (default: all)")
    t.add_argument("--no-eval", dest="evaluate", action="store_false", help="train only")
    t.add_argument("--max-new-tokens", type=positive_int, default=None,
                   help="generation length (default: per task family)")
    t.add_argument("--eval-batch-size", type=positive_int, default=16, help="(default: %(default)s)")
    lo = p.add_argument_group("LoRA (with --method lora)")
    lo.add_argument("--lora-rank", type=positive_int, default=8, help="(default: %(default)s)")
    lo.add_argument("--lora-alpha", type=positive_float, default=16.0, help="(default: %(default)s)")
    lo.add_argument("--lora-dropout", type=probability, default=0.05, help="(default: %(default)s)")
    lo.add_argument("--lora-targets", default=None,
                    help="comma-separated module names (default: q_proj,v_proj for Llama, query,value for BERT)")
    p.set_defaults(run=run)


def _check_args(args: argparse.Namespace) -> None:
    if args.method and args.intervention and args.method != args.intervention:
        raise UserError(f"--method {args.method} contradicts --intervention {args.intervention}: give one of them")
    if args.data is not None:
        extra = [f"--{k.replace('_', '-')}" for k in ("limit", "train_task", "eval_limit", "max_new_tokens")
                 if getattr(args, k) is not None]
        if extra:
            raise UserError(f"{', '.join(extra)} only apply to --task runs")
    elif args.resume or args.save_steps:
        raise UserError("--resume/--save-steps apply to --data runs only; --task runs are short: rerun them")


def interrupted(args: argparse.Namespace) -> str:
    """What Ctrl-C leaves: the checkpoint ``--resume`` continues from, or that there is none."""
    from ..harness.runs import last_checkpoint

    last = last_checkpoint(args.out) if args.data is not None else None
    if last:
        return f"rerun the same command with --resume to continue from {last}"
    hint = " (--save-steps N checkpoints every N steps)" if args.data is not None and not args.save_steps else ""
    return f"no checkpoint was saved, nothing to resume{hint}"


def run(args: argparse.Namespace) -> int:
    from ..config import ReftConfig
    from ..data import ExampleError
    from ..harness.recipe import TrainSettings
    from ..harness.runs import run_folder

    _check_args(args)
    method = args.method or args.intervention or "loreft"
    lr = args.lr if args.lr is not None else (5e-4 if method == "lora" else 4e-3)
    settings = TrainSettings(epochs=args.epochs, lr=lr, batch_size=args.batch_size,
                             weight_decay=args.weight_decay, max_length=args.max_length, seed=args.seed,
                             save_steps=args.save_steps, gradient_checkpointing=args.gradient_checkpointing)
    if args.task is not None:
        return _run_task(args, method, settings)
    config = None if method == "lora" else _reft_config(args, method, ReftConfig, glue=False)  # checked up front
    rows, sources = read_rows(args.data, "--data", ("prompt", "response"), nonempty=("prompt", "response"))
    check_model(args.model, causal=True, command="reft train --data")
    with run_folder(args.out, resume=args.resume):  # checked and locked before the model loads
        try:
            trained, metrics = _train_data(args, method, settings, config, rows)
        except ExampleError as e:
            raise located(e, sources) from None
    curve = metrics["loss_curve"]
    print(json.dumps({"out": args.out, "examples": metrics["examples"], "first_loss": curve[0][1] if curve else None,
                      "final_loss": curve[-1][1] if curve else None, "train_runtime_s": metrics.get("train_runtime")}))
    return 0


def _train_data(args: argparse.Namespace, method: str, settings, config, rows: list[dict]):
    from ..generation import format_prompts, prompt_format
    from ..harness.models import load_model
    from ..harness.recipe import train_reft

    model, tokenizer = load_model(args.model, dtype=dtype_of(args.dtype))
    chat_template = args.chat_template is not False
    prompts = format_prompts(tokenizer, [r["prompt"] for r in rows], chat_template)
    responses = [r["response"] for r in rows]
    if method == "lora":
        from ..harness.baselines import train_lora_causal

        trained, metrics = train_lora_causal(model, tokenizer, prompts, responses, args.out, settings,
                                             _lora_settings(args))
    else:
        trained, metrics = train_reft(model, tokenizer, config, prompts, responses, args.out, settings,
                                      resume=args.resume, prompt_format=prompt_format(tokenizer, chat_template))
    trained.print_trainable_parameters()
    return trained, metrics


def _reft_config(args: argparse.Namespace, method: str, cls, *, glue: bool):
    positions = args.positions or ("f1" if glue else "f7+l7")
    return cls(layers=args.layers, positions=positions, tied=args.tied, rank=args.rank, intervention=method,
               component=args.component, act=args.act, dropout=args.dropout)


def _lora_settings(args: argparse.Namespace):
    from ..harness.baselines import LoraSettings

    targets = tuple(t.strip() for t in args.lora_targets.split(",") if t.strip()) if args.lora_targets else None
    return LoraSettings(rank=args.lora_rank, alpha=args.lora_alpha, dropout=args.lora_dropout, target_modules=targets)


def _run_task(args: argparse.Namespace, method: str, settings) -> int:
    from ..config import ReftConfig
    from ..harness.models import ENCODER_TYPES, load_model
    from ..harness.runs import run_folder
    from ..harness.suite import headline, run_task
    from ..harness.tasks import get_task

    spec = get_task(args.task)
    glue = spec.family == "glue"
    model_type = check_model(args.model, causal=not glue, command=f"reft train --task {spec.name}")
    if glue and model_type not in ENCODER_TYPES:
        raise UserError(f"{spec.name} is a GLUE classification task: use an encoder, e.g. --model minilm")
    if args.eval_split not in spec.splits:
        raise UserError(f"--eval-split {args.eval_split}: task {spec.name!r} has no split {args.eval_split!r}; "
                        f"available: {list(spec.splits)}")
    config = None if method == "lora" else _reft_config(args, method, ReftConfig, glue=glue)
    with run_folder(args.out):  # checked and locked before the model loads
        model, tokenizer = load_model(args.model, dtype=dtype_of(args.dtype))
        result = run_task(model, tokenizer, spec.name, method, args.out, settings=settings, reft_config=config,
                          lora=_lora_settings(args), train_task=args.train_task, train_limit=args.limit,
                          eval_split=args.eval_split, eval_limit=args.eval_limit, evaluate=args.evaluate,
                          chat_template=args.chat_template is not False and not glue,
                          max_new_tokens=args.max_new_tokens, eval_batch_size=args.eval_batch_size,
                          model_name=args.model)
    print(json.dumps(headline(result)["eval"] if "eval" in result else headline(result)["parameters"]))
    print(f"results: {args.out}/results.json")
    return 0
