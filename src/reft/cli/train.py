"""``reft train``: fit interventions (or the LoRA baseline) on a JSONL of prompt/response pairs or a suite task."""

from __future__ import annotations

import argparse
import json

from .common import (
    UserError,
    add_model_args,
    check_model,
    load_base,
    located,
    nonnegative_float,
    positive_float,
    positive_int,
    probability,
    read_examples,
)

EPILOG = """examples:
  reft train --data train.jsonl --out runs/demo
  reft train --data train.jsonl --out runs/paper --layers "3;9;18;24" --positions f7+l7 --untied --rank 4
  reft train --data train.jsonl --out runs/d --intervention direft --epochs 5 --lr 1e-3 --save-steps 50 --resume
  reft train --task boolq --limit 500 --eval-limit 200 --out runs/boolq --no-chat-template
  reft train --task svamp --train-task math_data_3k --limit 300 --eval-limit 200 --out runs/svamp --method lora
  reft train --task sst2 --model minilm --limit 2000 --positions f1 --rank 1 --lr 2e-3 --out runs/sst2 --seed 1
  reft train --task mrpc --model minilm --paper-hparams --seed 42 --out runs/mrpc
  reft train --task rte --model minilm --paper-hparams --method probe --lr 2e-3 --out runs/rte-probe

--data holds one example per row: {"prompt": "...", "response": "..."} or chat turns {"messages": [{"role":
"system"|"user"|"assistant", "content": "..."}, ...]} whose last turn, the assistant's, is the response. It may be
JSON Lines (one object per line), CSV/TSV (a header row; 'messages' as a JSON cell), Parquet, or a folder written
by datasets' Dataset.save_to_disk. Prompts are wrapped in the model's chat template unless --no-chat-template
(chat turns other than a lone user turn need it); the choice is stored in the adapter, and 'reft generate' and
'reft eval' use it. The run folder gets adapter/, loss_curve.png, train_metrics.json and reft_run.json (what the
run is: config, data, settings), and tensorboard/ with --report-to tensorboard; use the adapter with
'reft generate --adapter runs/demo/adapter'.

A run folder belongs to one run: --resume continues its newest checkpoint, and refuses a checkpoint of other data
or settings; without --resume a folder holding checkpoints is refused; a second 'reft train' into the same folder
is refused while the first runs. Ctrl-C finishes the step in progress, saves it (with --save-steps), stops and says
which checkpoint --resume continues from; a second Ctrl-C stops at once.

With --task (see reft.harness.tasks: boolq, arc_e, math_data_3k, sst2, ...) the run trains on a seeded subset
of --limit training examples, evaluates on --eval-split (first --eval-limit examples) and writes results.json.
GLUE tasks (--model minilm) train a classification head with the interventions, pick the epoch on the seeded dev half
and report on the held-out test half. --method lora trains the LoRA baseline (peft) on the same data, --method probe
the head alone on the frozen encoder. GLUE batches are grouped by length (--no-group-by-length: random batches).
--paper-hparams fills every option not given with the paper's GLUE protocol (reft.harness.tasks.glue.PAPER_GLUE): rank
1, all layers, untied, the task's positions (pyreft's n//2 rule), R parametrised as pyreft does (householder), dropout,
learning rate and warm-up ratio, batch 32, weight decay 0, linear schedule, max length 256, 10 epochs. The paper's
learning rates are LoReFT's: give --lr for lora/probe (picked on the dev half).
"""

#: the frozen base's dropout during GLUE training unless --base-dropout says otherwise: the CLI's spelling of
#: reft.harness.classification.BASE_DROPOUT (the choice and its measurement are in docs/results.md)
BASE_DROPOUT_DEFAULT = "off"
#: what an option not given on the command line means without --paper-hparams
PLAIN_DEFAULTS = {"epochs": 3.0, "layers": "all", "rank": 4, "dropout": 0.0, "batch_size": 8, "weight_decay": 0.0,
                  "max_length": 512, "warmup_ratio": 0.0, "tied": True, "position_rule": "split", "rotation": "qr"}


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train interventions on prompt/response pairs", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p, chat_default="on; GLUE tasks: off")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="examples with 'prompt' and 'response' (or chat 'messages'): a .jsonl, .csv, "
                                    ".tsv or .parquet file, or a datasets save_to_disk folder")
    src.add_argument("--task", help="a task of the suite (reft.harness.tasks), e.g. boolq, arc_e, sst2")
    p.add_argument("--method", default=None, choices=["loreft", "direft", "lora", "probe"],
                   help="loreft/direft (= --intervention), the LoRA baseline, or probe (GLUE: the head alone) "
                        "(default: --intervention)")
    p.add_argument("--out", required=True, help="run folder: new, empty, or this run's (with --resume)")
    g = p.add_argument_group("interventions")
    g.add_argument("--layers", default=None, help="'all' or indices like '3;9;18' (default: all)")
    g.add_argument("--positions", default=None,
                   help="first/last prompt tokens: f7+l7, l1, f1 (= [CLS]) (default: f1 for GLUE tasks, else f7+l7; "
                        "--paper-hparams: the task's, e.g. f3)")
    g.add_argument("--position-rule", choices=["split", "half"], default=None,
                   help="prompts shorter than the positions: split (reft's: both parts share the prompt, one part "
                        "clipped to n) or half (pyreft's: each part at most n//2 tokens) (default: split; "
                        "--paper-hparams: half)")
    g.add_argument("--rotation", choices=["qr", "householder"], default=None,
                   help="how R is parametrised: qr (reft's: no buffer) or householder (torch's orthogonal "
                        "parametrisation, as pyreft: pyreft's training trajectory, a d x d buffer per intervention) "
                        "(default: qr; --paper-hparams: householder)")
    g.add_argument("--untied", dest="tied", action="store_const", const=False, default=None,
                   help="separate interventions for prefix and suffix")
    g.add_argument("--rank", type=positive_int, default=None, help="low rank r (default: 4; --paper-hparams: 1)")
    g.add_argument("--intervention", default=None,
                   help="loreft, noreft, consreft, lobireft, direft, orthodireft (default: loreft)")
    g.add_argument("--component", default="block_output",
                   help="block_output, block_input, attention_output, mlp_output (default: %(default)s)")
    g.add_argument("--act", default=None, help="activation on Wh+b, e.g. relu (default: none)")
    g.add_argument("--dropout", type=probability, default=None,
                   help="dropout on the edit (default: 0; --paper-hparams: the task's; lora: its --lora-dropout)")
    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=positive_float, default=None,
                   help="(default: 3; --paper-hparams: 10, as experiments/glue_paper.py)")
    o.add_argument("--lr", type=positive_float, default=None,
                   help="(default: 4e-3 for ReFT, 5e-4 for LoRA and the probe; --paper-hparams: the task's)")
    o.add_argument("--batch-size", type=positive_int, default=None, help="(default: 8; --paper-hparams: 32)")
    o.add_argument("--weight-decay", type=nonnegative_float, default=None, help="(default: 0)")
    o.add_argument("--warmup-ratio", type=probability, default=None,
                   help="linear warm-up over this fraction of the optimiser steps, then linear decay to 0 "
                        "(default: 0; --paper-hparams: the task's)")
    o.add_argument("--max-length", type=positive_int, default=None,
                   help="tokens per example (default: 512; --paper-hparams: 256)")
    o.add_argument("--seed", type=int, default=42, help="(default: %(default)s)")
    o.add_argument("--save-steps", type=positive_int, default=None, help="checkpoint every N steps (for --resume)")
    o.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    o.add_argument("--gradient-checkpointing", action="store_true", help="trade compute for activation memory")
    o.add_argument("--report-to", choices=["none", "tensorboard"], default="none",
                   help="tensorboard: event files in --out/tensorboard (offline; 'tensorboard --logdir runs/x') "
                        "(default: %(default)s)")
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
    c = p.add_argument_group("GLUE tasks (classification)")
    c.add_argument("--paper-hparams", action="store_true",
                   help="fill every option not given with the paper's GLUE protocol for --task (see below)")
    c.add_argument("--group-by-length", action=argparse.BooleanOptionalAction, default=None,
                   help="batches of similar length (transformers' LengthGroupedSampler; default: on for GLUE tasks)")
    c.add_argument("--base-dropout", choices=["on", "off"], default=None,
                   help="the frozen base model's dropout during training: on (as in pyreft) or off "
                        f"(default: {BASE_DROPOUT_DEFAULT}; the measurement is in docs/results.md)")
    lo = p.add_argument_group("LoRA (with --method lora)")
    lo.add_argument("--lora-rank", type=positive_int, default=8, help="(default: %(default)s)")
    lo.add_argument("--lora-alpha", type=positive_float, default=16.0, help="(default: %(default)s)")
    lo.add_argument("--lora-dropout", type=probability, default=None,
                    help="(default: 0.05; --paper-hparams: the task's dropout)")
    lo.add_argument("--lora-targets", default=None,
                    help="comma-separated module names (default: q_proj,v_proj for Llama, query,value for BERT)")
    p.set_defaults(run=run)


def _check_args(args: argparse.Namespace) -> None:
    if args.method and args.intervention and args.method != args.intervention:
        raise UserError(f"--method {args.method} contradicts --intervention {args.intervention}: give one of them")
    if args.data is not None:
        extra = [f"--{k.replace('_', '-')}" for k in ("limit", "train_task", "eval_limit", "max_new_tokens",
                                                      "base_dropout") if getattr(args, k) is not None]
        extra += ["--paper-hparams"] * args.paper_hparams + ["--method probe"] * (args.method == "probe")
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


def _glue_task(args: argparse.Namespace) -> bool:
    if args.task is None:
        return False
    from ..harness.tasks import get_task

    return get_task(args.task).family == "glue"


def _fill_defaults(args: argparse.Namespace, method: str) -> None:
    """Resolve the options left at None: the paper's GLUE protocol (--paper-hparams) or :data:`PLAIN_DEFAULTS`."""
    glue = _glue_task(args)
    if args.paper_hparams:
        if not glue:
            raise UserError(f"--paper-hparams: {args.task} is not a GLUE task (the paper's fixed settings are for "
                            "GLUE: sst2, mrpc, cola, rte, stsb, qnli)")
        from ..harness.tasks.glue import PAPER_GLUE_SHARED, paper_hyperparameters, paper_rotation

        try:
            hp = paper_hyperparameters(args.task)
        except ValueError as e:
            raise UserError(f"--paper-hparams: {e}") from None
        paper = {"layers": PAPER_GLUE_SHARED["layers"], "rank": PAPER_GLUE_SHARED["rank"],
                 "tied": PAPER_GLUE_SHARED["tied"], "batch_size": PAPER_GLUE_SHARED["batch_size"],
                 "position_rule": PAPER_GLUE_SHARED["position_rule"],
                 "rotation": paper_rotation(method) if method not in ("lora", "probe") else "qr",
                 "weight_decay": PAPER_GLUE_SHARED["weight_decay"], "max_length": PAPER_GLUE_SHARED["max_length"],
                 "warmup_ratio": hp.warmup_ratio, "positions": hp.positions, "lr": hp.lr,
                 "dropout": hp.dropout, "epochs": 10.0}
        if method == "lora" and args.lora_dropout is None:
            args.lora_dropout = hp.dropout
        for name, value in paper.items():
            if getattr(args, name) is None:
                setattr(args, name, value)
    for name, value in PLAIN_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.lora_dropout is None:
        args.lora_dropout = 0.05
    if args.group_by_length is None:
        args.group_by_length = glue
    if args.base_dropout is not None and not glue:
        raise UserError("--base-dropout applies to GLUE (classification) tasks only")
    args.base_dropout = args.base_dropout or BASE_DROPOUT_DEFAULT


def run(args: argparse.Namespace) -> int:
    from ..config import ReftConfig
    from ..data import ExampleError
    from ..harness.recipe import TrainSettings
    from ..harness.runs import run_folder

    _check_args(args)
    method = args.method or args.intervention or "loreft"
    _fill_defaults(args, method)
    lr = args.lr if args.lr is not None else (5e-4 if method in ("lora", "probe") else 4e-3)
    settings = TrainSettings(epochs=args.epochs, lr=lr, batch_size=args.batch_size,
                             weight_decay=args.weight_decay, max_length=args.max_length, seed=args.seed,
                             save_steps=args.save_steps, gradient_checkpointing=args.gradient_checkpointing,
                             warmup=args.warmup_ratio, group_by_length=args.group_by_length,
                             report_to=() if args.report_to == "none" else (args.report_to,))
    if args.task is not None:
        return _run_task(args, method, settings)
    config = None if method == "lora" else _reft_config(args, method, ReftConfig, glue=False)  # checked up front
    examples = read_examples(args.data)
    # plain text needs no tokenizer: chat turns that need a template fail before the model loads
    plain = examples.rendered_prompts(None, chat_template=False) if args.chat_template is False else None
    check_model(args.model, causal=True, command="reft train --data")
    with run_folder(args.out, resume=args.resume):  # checked and locked before the model loads
        try:
            trained, metrics = _train_data(args, method, settings, config, examples, plain)
        except ExampleError as e:
            raise located(e, examples.sources) from None
    curve = metrics["loss_curve"]
    print(json.dumps({"out": args.out, "examples": metrics["examples"], "first_loss": curve[0][1] if curve else None,
                      "final_loss": curve[-1][1] if curve else None, "train_runtime_s": metrics.get("train_runtime")}))
    return 0


def _train_data(args: argparse.Namespace, method: str, settings, config, examples, plain: list[str] | None):
    """Train on ``examples``; ``plain``: their prompts already rendered without the chat template, or None."""
    from ..generation import prompt_format
    from ..harness.recipe import train_reft

    model, tokenizer = load_base(args)
    chat_template = plain is None
    prompts = plain if plain is not None else examples.rendered_prompts(tokenizer, True)
    responses = examples.responses
    if method == "lora":
        from ..harness.baselines import train_lora_causal

        trained, metrics = train_lora_causal(model, tokenizer, prompts, responses, args.out, settings,
                                             _lora_settings(args),
                                             prompt_format=prompt_format(tokenizer, chat_template))
    else:
        trained, metrics = train_reft(model, tokenizer, config, prompts, responses, args.out, settings,
                                      resume=args.resume, prompt_format=prompt_format(tokenizer, chat_template))
    trained.print_trainable_parameters()
    return trained, metrics


def _reft_config(args: argparse.Namespace, method: str, cls, *, glue: bool):
    positions = args.positions or ("f1" if glue else "f7+l7")
    return cls(layers=args.layers, positions=positions, tied=args.tied, rank=args.rank, intervention=method,
               component=args.component, act=args.act, dropout=args.dropout, position_rule=args.position_rule,
               rotation=args.rotation)


def _lora_settings(args: argparse.Namespace):
    from ..harness.baselines import LoraSettings

    targets = tuple(t.strip() for t in args.lora_targets.split(",") if t.strip()) if args.lora_targets else None
    return LoraSettings(rank=args.lora_rank, alpha=args.lora_alpha, dropout=args.lora_dropout, target_modules=targets)


def _run_task(args: argparse.Namespace, method: str, settings) -> int:
    from ..config import ReftConfig
    from ..harness.models import ENCODER_TYPES
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
    if method == "probe" and not glue:
        raise UserError(f"--method probe trains a classification head: {spec.name} is not a GLUE task")
    config = None if method in ("lora", "probe") else _reft_config(args, method, ReftConfig, glue=glue)
    with run_folder(args.out):  # checked and locked before the model loads
        model, tokenizer = load_base(args)
        result = run_task(model, tokenizer, spec.name, method, args.out, settings=settings, reft_config=config,
                          lora=_lora_settings(args), train_task=args.train_task, train_limit=args.limit,
                          eval_split=args.eval_split, eval_limit=args.eval_limit, evaluate=args.evaluate,
                          chat_template=args.chat_template is not False and not glue,
                          max_new_tokens=args.max_new_tokens, eval_batch_size=args.eval_batch_size,
                          model_name=args.model, base_dropout=args.base_dropout == "on")
    print(json.dumps(headline(result)["eval"] if "eval" in result else headline(result)["parameters"]))
    print(f"results: {args.out}/results.json")
    return 0
