"""``reft eval``: score a ReFT adapter, a LoRA adapter or the bare model on a task of the suite."""

from __future__ import annotations

import argparse
import json

from .common import (
    UserError,
    add_model_args,
    check_model,
    check_output_file,
    load_base,
    located,
    positive_int,
)

EPILOG = """examples:
  reft eval --task boolq --adapter runs/boolq/adapter --limit 200
  reft eval --task svamp --lora runs/svamp-lora/adapter --limit 200 --out svamp_lora.json --no-chat-template
  reft eval --task arc_e --limit 100                                   # the bare model, no adapter
  reft eval --task sst2 --model minilm --adapter runs/sst2/adapter --seed 1  # GLUE: held-out test half of seed 1
  reft eval --task rte --model minilm --probe runs/rte-probe/adapter          # the probe baseline (head only)
  reft eval --task alpaca_eval --adapter runs/chat/adapter --limit 50  # writes alpaca_eval outputs, no score

Generation tasks are scored with the task's scorer (accuracy); GLUE tasks with their metric (accuracy, MCC, F1,
Pearson/Spearman) on the seeded held-out test half ('--split dev' gives the selection half). Use the same
--seed as in training for GLUE. A ReFT adapter's prompts are built as in training (chat template or not, stored
in the adapter); --chat-template / --no-chat-template overrides that with a warning. The results JSON holds the
headline numbers and every example's prediction.
"""


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate an adapter (or the bare model) on a task", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p, chat_default="as the adapter was trained; else on")
    p.add_argument("--task", required=True, help="task name from reft.harness.tasks, e.g. boolq, arc_e, sst2")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--adapter", default=None, help="ReFT adapter folder ('reft train' run folder/adapter)")
    which.add_argument("--lora", default=None, help="LoRA adapter folder ('reft train --method lora')")
    which.add_argument("--probe", default=None, help="probe head folder ('reft train --method probe', GLUE)")
    p.add_argument("--split", default="test", help="(default: %(default)s)")
    p.add_argument("--limit", type=positive_int, default=None, help="evaluate the first N examples (default: all)")
    p.add_argument("--seed", type=int, default=42,
                   help="GLUE dev/test division: the --seed given to 'reft train' (default: %(default)s, as there)")
    p.add_argument("--out", default=None, help="results JSON (default: eval-<task>-<split>.json)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="(default: %(default)s)")
    p.add_argument("--max-new-tokens", type=positive_int, default=None, help="(default: per task family)")
    p.add_argument("--max-length", type=positive_int, default=128, help="GLUE tokens per input (default: %(default)s)")
    p.set_defaults(run=run)


def interrupted(args: argparse.Namespace) -> str:
    """What Ctrl-C leaves."""
    return "no results were written (they are written when the evaluation is done)"


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..data import ExampleError
    from ..generation import recorded_prompt_format
    from ..harness.evaluate import evaluate_classification, evaluate_generation, summary, write_results
    from ..harness.tasks import get_task

    spec = get_task(args.task)
    if args.split not in spec.splits:
        raise UserError(f"--split {args.split}: task {spec.name!r} has no split {args.split!r}; available: "
                        f"{list(spec.splits)}")
    glue = spec.family == "glue"
    if glue and not (args.adapter or args.lora or args.probe):
        raise UserError(f"{spec.name} is a classification task and the bare model has no head: pass --adapter, "
                        "--lora or --probe with a classifier trained by 'reft train --task " + spec.name + "'")
    if args.probe and not glue:
        raise UserError(f"--probe is a classification head: {spec.name} is a generation task; evaluate a probe on "
                        "a GLUE task (e.g. --task sst2 --model minilm)")
    out = Path(args.out or f"eval-{spec.name}-{args.split}.json")
    check_output_file(str(out), "--out")
    check_model(args.model, causal=not glue, command=f"reft eval --task {spec.name}")
    if args.adapter:
        from ..save_load import read_adapter

        read_adapter(args.adapter)  # a missing, corrupt or diverged adapter fails before the model loads
    examples = spec.load(args.split, limit=args.limit, seed=args.seed if glue else 0)
    model, tokenizer = load_base(args)
    if args.adapter:
        from ..model import load_adapter

        model = load_adapter(model, args.adapter)
        if glue and not hasattr(model, "head"):
            raise UserError(f"--adapter {args.adapter} has no classification head: it was not trained on a GLUE task")
    elif args.lora:
        from ..harness.baselines import load_lora

        model = load_lora(model, args.lora)
    elif args.probe:
        from ..harness.baselines import ProbeForSequenceClassification

        model = ProbeForSequenceClassification.from_pretrained(model, args.probe)
    if glue:
        result = evaluate_classification(model, tokenizer, spec, args.split, seed=args.seed, examples=examples,
                                         batch_size=args.batch_size, max_length=args.max_length)
    else:
        chat_template = (True if args.chat_template is None and recorded_prompt_format(model) is None
                         else args.chat_template)
        try:
            result = evaluate_generation(model, tokenizer, spec, args.split, examples=examples,
                                         batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                                         chat_template=chat_template)
        except ExampleError as e:
            raise located(e, [f"--task {spec.name} {args.split} example {i}" for i in range(len(examples))]) from None
    result |= {"model": args.model, "adapter": args.adapter, "lora": args.lora, "probe": args.probe}
    name = Path(args.adapter or args.lora or args.probe or args.model).name
    write_results(out, result, generator=f"reft-{name}")
    print(json.dumps(summary(result)))
    print(f"results: {out}")
    return 0
