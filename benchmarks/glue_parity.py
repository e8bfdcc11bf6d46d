"""reft vs pyreft on a GLUE classification task: the same config, data order, initial weights, seed, epochs,
learning rate and head; both loss curves and the test metric, each library in its own process.

    bash benchmarks/peer_env.sh                                   # once: the pyreft 0.1.0 + pyvene 0.1.8 venv
    .venv/bin/python benchmarks/glue_parity.py                    # MRPC (full train set), 3 seeds, 10 epochs
    .venv/bin/python benchmarks/glue_parity.py --limit 64 --test-limit 64 --epochs 2 --seeds 42 --name smoke

For each seed the driver writes a plan (``raw/plan-s<seed>.json`` + ``init-s<seed>.safetensors``): the training
examples (a seeded subset of the train split, ``--limit``), the held-out test half of the GLUE dev file (drawn
with the seed, :mod:`reft.harness.tasks.glue`), the batch order of every epoch (transformers'
``get_length_grouped_indices`` with a generator seeded per epoch: length-grouped, as the protocol batches), the
initial LoReFT parameters (R ∈ ℝ^{d×r} orthonormal, W ∈ ℝ^{r×d}, b ∈ ℝ^r per layer) and the head, drawn once by
reft, and the `TrainingArguments`. Then

* the reft side (this file, ``--side reft``, main venv) trains through the harness path,
  :func:`reft.harness.classification.fit_classifier` with :class:`reft.trainer.ReftTrainer`, the stored A set to
  ``INIT_SCALE · R`` (what a fresh init holds);
* the peer side (glue_parity_peer.py, peer venv) trains pyreft's GLUE pipeline: pyreft's dataset conventions,
  ``get_reft_model``, ``LoreftIntervention``, ``ReftTrainerForSequenceClassification``;

each predicts the test half with the final parameters (no epoch selection: both see the same number of steps),
the driver scores both with the task metric. pyreft runs twice per seed (``--peer-variants``): as released
(``pyreft``), and ``pyreft_fixed``, where the head's gradient is cleared after every step. pyvene's
``IntervenableModel.zero_grad()`` clears only the interventions' gradients and `Trainer` clears gradients through
``model.zero_grad()``, so in pyreft's GLUE pipeline the head's gradient is the running sum of all steps' gradients
(and, through clipping of the total norm, shrinks the interventions' steps as it grows). reft clears every
gradient; with the head's cleared too, pyreft's gradient norms and losses match reft's step for step.

Defaults: the paper's MRPC settings (rank 1, every layer, ``f3``, lr 3e-4, batch 32, warm-up 0, linear schedule,
weight decay 0, max length 256), the base's dropout on (pyreft's behaviour) and the interventions' dropout 0,
because the two libraries define it differently (pyreft: on Φ(h), reft: on the edit Φ(h) − h).

Writes ``benchmarks/results/<name>.json`` (settings, every curve per seed, metrics, checks, how far each
parameter group moved) and ``<name>.png``; per-run files under ``benchmarks/results/raw/<name>/``.
Checks: both sides consumed the plan's order; the same optimiser settings; the same first-step loss when nothing
random acts (``--base-dropout off --head-dropout 0``); every example edited at the same positions (pyreft clips
``f<p>`` to ⌊n/2⌋ tokens; reft does too with ``position_rule="half"``, the default here, and clips to n with
``--position-rule split``: the count of examples where the two differ is reported).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_PEER = HERE / ".peer-venv" / "bin" / "python"
OUT = HERE / "results"


# ---- plan ----------------------------------------------------------------------------------------------------
def make_plan(args, seed: int, raw: Path) -> Path:
    import torch
    from safetensors.torch import save_file
    from transformers.trainer_pt_utils import get_length_grouped_indices

    from reft import get_reft_model
    from reft.harness.classification import make_classification_dataset
    from reft.harness.models import load_model, minilm_path
    from reft.harness.suite import subsample
    from reft.harness.tasks import get_task
    from reft.interventions.orthogonal import orthonormalize

    spec = get_task(args.task)
    train = subsample(spec.load("train"), args.limit, 0)
    test = spec.load("test", seed=seed, limit=args.test_limit)
    model, tokenizer = load_model("minilm")
    lengths = [len(r["input_ids"]) for r in make_classification_dataset(tokenizer, train, args.max_length)]
    orders = [get_length_grouped_indices(lengths, args.batch_size, generator=torch.Generator().manual_seed(
        seed * 1000 + epoch)) for epoch in range(math.ceil(args.epochs))]
    torch.manual_seed(seed)
    reft_model = get_reft_model(model, reft_config(args), num_labels=spec.num_labels)
    init = {f"head.{k}": v.detach().clone().contiguous() for k, v in reft_model.head.state_dict().items()}
    for name, iv in reft_model.interventions.items():
        layer = int(name.removeprefix("layer"))
        init[f"layer{layer}.R"] = orthonormalize(iv.rotate.weight.detach()).contiguous()
        init[f"layer{layer}.W"] = iv.source.weight.detach().clone().contiguous()
        init[f"layer{layer}.b"] = iv.source.bias.detach().clone().contiguous()
    init_file = raw / f"init-s{seed}.safetensors"
    save_file(init, str(init_file))
    hp = {"num_train_epochs": args.epochs, "per_device_train_batch_size": args.batch_size,
          "learning_rate": args.lr, "weight_decay": 0.0, "warmup_steps": args.warmup_ratio,
          "lr_scheduler_type": "linear", "logging_steps": 1, "seed": seed, "data_seed": seed}
    plan = {"task": spec.name, "num_labels": spec.num_labels, "seed": seed, "model_path": str(minilm_path()),
            "max_length": args.max_length, "positions": args.positions, "rank": args.rank,
            "position_rule": args.position_rule, "reft_rotation": args.reft_rotation,
            "dropout": args.dropout, "head_dropout": args.head_dropout, "base_dropout": args.base_dropout == "on",
            "threads": args.threads, "train": train, "test": test, "orders": orders, "init_file": str(init_file),
            "training_arguments": hp}
    path = raw / f"plan-s{seed}.json"
    path.write_text(json.dumps(plan))
    return path


def reft_config(args):
    from reft import ReftConfig

    return ReftConfig(layers="all", positions=args.positions, rank=args.rank, tied=False, intervention="loreft",
                      dropout=args.dropout, position_rule=args.position_rule)


# ---- the reft side -------------------------------------------------------------------------------------------
def householder_basis(r0):
    """A module returning R ``[d, r]`` held under torch's ``orthogonal`` parametrisation (Householder for d > r), as
    pyreft holds it: the ``--reft-rotation householder`` diagnostic, which swaps reft's QR-of-A parametrisation
    for pyreft's. R starts at ``r0`` (assigned through right_inverse, as the peer assigns rotate_layer.weight)."""
    import torch

    class TorchOrthogonalBasis(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.holder = torch.nn.Module()
            self.holder.weight = torch.nn.Parameter(torch.empty_like(r0))
            torch.nn.utils.parametrizations.orthogonal(self.holder)
            self.holder.weight = r0

        def forward(self):
            return self.holder.weight

    return TorchOrthogonalBasis()


class PlanSampler:
    """Yields the plan's order for epoch 1, 2, … on successive iterations (and records what it yielded)."""

    def __init__(self, orders: list[list[int]]) -> None:
        self.orders, self.epoch, self.yielded = orders, 0, []

    def __len__(self) -> int:
        return len(self.orders[0])

    def __iter__(self):
        order = self.orders[min(self.epoch, len(self.orders) - 1)]
        self.epoch += 1
        self.yielded.append(list(order))
        return iter(order)


def reft_side(plan_path: str, out: str) -> dict:
    import platform
    import resource
    from importlib.metadata import version

    import torch
    import transformers
    from safetensors.torch import load_file

    from reft import ReftConfig
    from reft.harness.classification import fit_classifier, predict_classification
    from reft.harness.models import load_model
    from reft.harness.recipe import TrainSettings
    from reft.harness.tasks import get_task
    from reft.interventions.orthogonal import INIT_SCALE
    from reft.positions import prompt_positions
    from reft.trainer import ReftTrainer

    plan = json.loads(Path(plan_path).read_text())
    torch.set_num_threads(plan["threads"])
    start = time.perf_counter()
    spec = get_task(plan["task"])
    model, tokenizer = load_model("minilm")
    torch.manual_seed(plan["seed"])
    config = ReftConfig(layers="all", positions=plan["positions"], rank=plan["rank"], tied=False,
                        intervention="loreft", dropout=plan["dropout"], position_rule=plan["position_rule"])
    from reft.model.classification import ReftModelForSequenceClassification

    reft_model = ReftModelForSequenceClassification(model, config, spec.num_labels, plan["head_dropout"])
    init = load_file(plan["init_file"])
    with torch.no_grad():
        reft_model.head.load_state_dict({k[len("head."):]: v for k, v in init.items() if k.startswith("head.")})
        for name, iv in reft_model.interventions.items():
            layer = int(name.removeprefix("layer"))
            if plan.get("reft_rotation", "qr") == "householder":
                iv.rotate = householder_basis(init[f"layer{layer}.R"])
            else:
                iv.rotate.weight.copy_(INIT_SCALE * init[f"layer{layer}.R"])
            iv.source.weight.copy_(init[f"layer{layer}.W"])
            iv.source.bias.copy_(init[f"layer{layer}.b"])
    hp = plan["training_arguments"]
    settings = TrainSettings(epochs=hp["num_train_epochs"], lr=hp["learning_rate"],
                             batch_size=hp["per_device_train_batch_size"], weight_decay=hp["weight_decay"],
                             warmup=hp["warmup_steps"], scheduler=hp["lr_scheduler_type"],
                             max_length=plan["max_length"], seed=plan["seed"], logging_steps=hp["logging_steps"])
    sampler = PlanSampler(plan["orders"])
    trainer_cls = type("PlanReftTrainer", (ReftTrainer,), {"_get_train_sampler": lambda self, *a, **k: sampler})
    seen_args: dict = {}
    grad_norms: list[float] = []

    class Record(transformers.TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "grad_norm" in logs:
                grad_norms.append(float(logs["grad_norm"]))

        def on_train_begin(self, args, state, control, **kwargs):
            seen_args.update({k: getattr(args, k) for k in ("optim", "max_grad_norm", "adam_beta1", "adam_beta2",
                                                            "adam_epsilon", "lr_scheduler_type", "warmup_steps",
                                                            "weight_decay", "learning_rate")})

    sys.path.insert(0, str(HERE))
    from _grad_groups import GradGroups

    grads = GradGroups()
    with tempfile.TemporaryDirectory() as run_dir:
        info = fit_classifier(reft_model, tokenizer, spec, plan["train"], None, Path(run_dir) / "run", settings,
                              trainer_cls=trainer_cls, progress=False, base_dropout_active=plan["base_dropout"],
                              callbacks=[Record(), grads])
    from safetensors.torch import save_file

    from reft.interventions.orthogonal import orthonormalize

    final = {f"head.{k}": v.detach().contiguous() for k, v in reft_model.head.state_dict().items()}
    for name, iv in reft_model.interventions.items():
        layer = int(name.removeprefix("layer"))
        final[f"layer{layer}.W"] = iv.source.weight.detach().contiguous()
        final[f"layer{layer}.b"] = iv.source.bias.detach().contiguous()
        if hasattr(iv.rotate, "holder"):  # householder_basis
            final[f"layer{layer}.R"] = iv.rotate().detach().contiguous()
            continue
        final[f"layer{layer}.R"] = orthonormalize(iv.rotate.weight.detach()).contiguous()
        final[f"layer{layer}.A_norm"] = iv.rotate.weight.detach().norm(dim=0).contiguous()  # ‖A‖ per column
    save_file(final, out.removesuffix(".json") + ".safetensors")
    preds = predict_classification(reft_model, tokenizer, plan["test"], num_labels=spec.num_labels,
                                   max_length=plan["max_length"])
    from reft.harness.classification import make_classification_dataset

    rows = make_classification_dataset(tokenizer, plan["train"], plan["max_length"])
    locations = [[p for p in prompt_positions(torch.ones(1, len(r["input_ids"])), None, plan["positions"],
                                              plan["position_rule"])[0].tolist() if p >= 0] for r in rows]
    result = {
        "library": "reft",
        "seed": plan["seed"],
        "loss_curve": info["loss_curve"],
        "grad_norms": grad_norms,
        "grad_groups": grads.records,
        "predictions": preds,
        "train_s": info["train_runtime_s"],
        "examples_per_s": len(rows) * settings.epochs / info["train_runtime_s"],
        "locations": locations,
        "input_ids": [r["input_ids"] for r in rows],
        "yielded_orders": sampler.yielded,
        "trainable_params": sum(p.numel() for p in reft_model.parameters() if p.requires_grad),
        "optimizer": seen_args,
        "padded_tokens_per_epoch": info["padded_tokens_per_epoch"],
        "total_s": time.perf_counter() - start,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "reft": version("reft")},
    }
    Path(out).write_text(json.dumps(result))
    return result


# ---- comparison ----------------------------------------------------------------------------------------------
def epoch_means(curve: list, steps_per_epoch: int) -> list[float]:
    losses = [loss for _, loss in curve]
    return [statistics.fmean(losses[i:i + steps_per_epoch]) for i in range(0, len(losses), steps_per_epoch)]


def movement(plan: dict, r: dict, p: dict) -> dict:
    """How far each parameter group moved from the shared init, per library (Frobenius norms summed over layers;
    R: the subspace's turn, ‖R Rᵀ − R₀ R₀ᵀ‖, which ignores a sign flip), and reft's ‖A‖ per column at the end."""
    from safetensors.torch import load_file

    init = load_file(plan["init_file"])
    final = {name: load_file(x["params_file"]) for name, x in (("reft", r), ("peer", p))}
    out: dict = {}
    for name, f in final.items():
        layers = sorted({k.split(".")[0] for k in init if k.startswith("layer")})
        turn = sum(float((f[f"{la}.R"] @ f[f"{la}.R"].T - init[f"{la}.R"] @ init[f"{la}.R"].T).norm())
                   for la in layers)
        out[name] = {"R_subspace_turn": turn,
                     "W": sum(float((f[f"{la}.W"] - init[f"{la}.W"]).norm()) for la in layers),
                     "b": sum(float((f[f"{la}.b"] - init[f"{la}.b"]).norm()) for la in layers),
                     "head": sum(float((f[k] - init[k]).norm()) for k in init if k.startswith("head."))}
    a = load_file(r["params_file"])
    out["reft_A_column_norm"] = [float(v.max()) for k, v in sorted(a.items()) if k.endswith("A_norm")]
    return out


def compare(runs: dict[str, list[dict]], plans: list[dict]) -> dict:
    """Per library and seed: test metric and per-epoch mean loss; reft − each pyreft variant; the checks.

    "Within seed noise": |difference of the means over seeds| ≤ 2 standard errors, the standard error from the
    two libraries' spreads over seeds, sqrt(sd_a²/k + sd_b²/k) (needs k ≥ 2 seeds)."""
    from reft.harness.tasks import get_task

    spec = get_task(plans[0]["task"])
    peers = [name for name in runs if name != "reft"]
    out: dict = {"per_seed": [], "checks": {"same_order_as_plan": True, "same_optimizer_settings": True,
                                           "same_input_ids": True}}
    steps = math.ceil(len(plans[0]["train"]) / plans[0]["training_arguments"]["per_device_train_batch_size"])
    for k, plan in enumerate(plans):
        labels = [e["label"] for e in plan["test"]]
        r = runs["reft"][k]
        row: dict = {"seed": plan["seed"]}
        for name in runs:
            x = runs[name][k]
            metrics = spec.metric(x["predictions"], labels)
            row[name] = {"metrics": metrics, "score": metrics[spec.main_metric],
                         "epoch_mean_loss": epoch_means(x["loss_curve"], steps), "first_loss": x["loss_curve"][0][1],
                         "train_s": x["train_s"], "examples_per_s": x["examples_per_s"],
                         "grad_norms_first_steps": x["grad_norms"][:4]}
        for peer in peers:
            p = runs[peer][k]
            diffs = [a[1] - b[1] for a, b in zip(r["loss_curve"], p["loss_curve"])]
            agree = [float(a == b) if spec.num_labels > 1 else 1.0 - min(1.0, abs(a - b))
                     for a, b in zip(r["predictions"], p["predictions"])]
            row[f"reft_vs_{peer}"] = {"first_loss_difference": diffs[0],
                                      "step_loss_difference_mean": statistics.fmean(diffs),
                                      "step_loss_difference_mean_abs": statistics.fmean(abs(d) for d in diffs),
                                      "prediction_agreement": statistics.fmean(agree),
                                      "movement": movement(plan, r, p)}
            n = len(plan["orders"])
            checks = out["checks"]
            checks["same_order_as_plan"] &= r["yielded_orders"][:n] == plan["orders"][:n] == p["yielded_orders"][:n]
            checks["same_optimizer_settings"] &= r["optimizer"] == p["optimizer"]
            # pyreft appends one pad token to every example: compare the tokens before it
            checks["same_input_ids"] &= all(a == b[:-1] for a, b in zip(r["input_ids"], p["input_ids"]))
            checks["examples_with_different_positions"] = sum(
                sorted(a) != sorted(q for q in b if q < len(ids))
                for a, b, ids in zip(r["locations"], p["locations"], r["input_ids"]))
        out["per_seed"].append(row)
    for name in runs:
        scores = [row[name]["score"] for row in out["per_seed"]]
        finals = [row[name]["epoch_mean_loss"][-1] for row in out["per_seed"]]
        out[name] = {"score_mean": statistics.fmean(scores),
                     "score_sd": statistics.stdev(scores) if len(scores) > 1 else None,
                     "final_epoch_loss_mean": statistics.fmean(finals),
                     "final_epoch_loss_sd": statistics.stdev(finals) if len(finals) > 1 else None,
                     "examples_per_s_median": statistics.median(row[name]["examples_per_s"]
                                                                for row in out["per_seed"])}
    k = len(plans)
    for peer in peers:
        d = {}
        for key in ("score", "final_epoch_loss"):
            diff = out["reft"][f"{key}_mean"] - out[peer][f"{key}_mean"]
            sds = (out["reft"][f"{key}_sd"], out[peer][f"{key}_sd"])
            d[f"{key}_difference"] = diff
            if None not in sds:
                se = math.sqrt((sds[0] ** 2 + sds[1] ** 2) / k)
                d[f"{key}_difference_2se"] = 2 * se
                d[f"{key}_within_seed_noise"] = abs(diff) <= 2 * se
        out[f"reft_minus_{peer}"] = d
    return out


def chart(runs: dict[str, list[dict]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.8), dpi=110)
    colours = {"reft": "tab:blue", "pyreft": "tab:orange", "pyreft_fixed": "tab:green"}
    for name, xs in runs.items():
        for i, x in enumerate(xs):
            steps = [s for s, _ in x["loss_curve"]]
            losses = [v for _, v in x["loss_curve"]]
            window = max(1, len(losses) // 50)
            smooth = [statistics.fmean(losses[max(0, j - window + 1):j + 1]) for j in range(len(losses))]
            ax.plot(steps, smooth, color=colours[name], alpha=0.8, lw=1.2,
                    label=f"{name}" if i == 0 else None)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("training loss (moving average)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    env = os.environ | {"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
    print(f"  {time.perf_counter() - t0:.0f} s", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", choices=["reft"], help=argparse.SUPPRESS)
    ap.add_argument("--plan", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--task", default="mrpc", help="a GLUE task with a train split (default: %(default)s)")
    ap.add_argument("--limit", type=int, default=None, help="training examples (seeded subset; default: all)")
    ap.add_argument("--test-limit", type=int, default=None, help="first N of the held-out test half (default: all)")
    ap.add_argument("--epochs", type=float, default=10.0)
    ap.add_argument("--seeds", default="42,43,44")
    ap.add_argument("--positions", default=None, help="default: the paper's for the task (f3)")
    ap.add_argument("--position-rule", choices=["half", "split"], default="half",
                    help="reft's short-prompt rule: half = pyreft's (each part at most n//2 tokens), split = reft's "
                         "default (one part clipped to n) (default: %(default)s)")
    ap.add_argument("--reft-rotation", choices=["qr", "householder"], default="qr",
                    help="reft's parametrisation of R: qr = the library's (QR of A, ‖A‖ = 1/2), householder = "
                         "torch's orthogonal parametrisation as pyreft uses it (a diagnostic) (default: %(default)s)")
    ap.add_argument("--rank", type=int, default=1)
    ap.add_argument("--lr", type=float, default=None, help="default: the paper's for the task")
    ap.add_argument("--warmup-ratio", type=float, default=None, help="default: the paper's for the task")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--dropout", type=float, default=0.0, help="the interventions' dropout (default: 0)")
    ap.add_argument("--head-dropout", type=float, default=0.1)
    ap.add_argument("--base-dropout", choices=["on", "off"], default="on")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--peer-variants", default="shipped,fixed",
                    help="pyreft runs per seed: shipped (as released) and/or fixed (the head's gradient cleared "
                         "every step: pyvene's zero_grad leaves it to accumulate) (default: %(default)s)")
    ap.add_argument("--peer-python", default=None,
                    help=f"the peer venv's python (default: {DEFAULT_PEER}, else /work/main's)")
    ap.add_argument("--name", default="glue_parity", help="output name under benchmarks/results/")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    if args.side == "reft":
        reft_side(args.plan, args.out)
        return 0
    from reft.harness.tasks.glue import paper_hyperparameters

    hp = paper_hyperparameters(args.task)
    args.positions = args.positions or hp.positions
    args.lr = hp.lr if args.lr is None else args.lr
    args.warmup_ratio = hp.warmup_ratio if args.warmup_ratio is None else args.warmup_ratio
    peer = Path(args.peer_python) if args.peer_python else next(
        (p for p in (DEFAULT_PEER, Path("/work/main/benchmarks/.peer-venv/bin/python")) if p.exists()), DEFAULT_PEER)
    if not peer.exists():
        print(f"no peer venv at {peer}: run 'bash benchmarks/peer_env.sh' first", file=sys.stderr)
        return 2
    raw = OUT / "raw" / args.name
    raw.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    variants = [v for v in args.peer_variants.split(",") if v]
    if not variants or set(variants) - {"shipped", "fixed"}:
        ap.error(f"--peer-variants: shipped and/or fixed, got {args.peer_variants!r}")
    runs: dict[str, list[dict]] = {"reft": []} | {"pyreft" if v == "shipped" else "pyreft_fixed": [] for v in variants}
    plans = []
    for i, seed in enumerate(int(s) for s in args.seeds.split(",")):
        plan = make_plan(args, seed, raw)
        plans.append(json.loads(plan.read_text()))
        jobs = {"reft": [sys.executable, str(Path(__file__).resolve()), "--side", "reft", "--plan", str(plan),
                         "--out", str(raw / f"reft-s{seed}.json")]}
        for variant in variants:
            name = "pyreft" if variant == "shipped" else "pyreft_fixed"
            jobs[name] = [str(peer), str(HERE / "glue_parity_peer.py"), "--plan", str(plan), "--variant", variant,
                          "--out", str(raw / f"{name}-s{seed}.json")]
        names = list(jobs)
        for name in names if i % 2 == 0 else names[::-1]:  # alternate who goes first
            run(jobs[name])
            runs[name].append(json.loads((raw / f"{name}-s{seed}.json").read_text()) | {
                "params_file": str(raw / f"{name}-s{seed}.safetensors")})
    summary = compare(runs, plans)
    first = plans[0]
    settings = {k: getattr(args, k) for k in ("task", "limit", "test_limit", "epochs", "seeds", "positions",
                                              "position_rule", "reft_rotation", "rank",
                                              "lr", "warmup_ratio", "batch_size", "max_length", "dropout",
                                              "head_dropout", "base_dropout", "threads")}
    settings |= {"train_examples": len(first["train"]), "test_examples": len(first["test"]),
                 "layers": "all", "tied": False, "scheduler": "linear", "weight_decay": 0.0}
    result = {"settings": settings, "summary": summary, "wall_s": time.perf_counter() - t0,
              "versions": {name: xs[0]["versions"] for name, xs in runs.items()},
              "notes": next(xs[0]["notes"] for name, xs in runs.items() if name != "reft"),
              "curves": {name: [{"seed": x["seed"], "loss_curve": x["loss_curve"]} for x in xs]
                         for name, xs in runs.items()}}
    (OUT / f"{args.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    chart(runs, OUT / f"{args.name}.png",
          f"{args.task}: reft vs pyreft, LoReFT r{args.rank} {args.positions}, {len(first['train'])} examples, "
          f"{args.epochs:g} epochs" + (" (smoke run)" if "smoke" in args.name else ""))
    print(json.dumps({k: summary[k] for k in summary if k != "per_seed"} | {"wall_s": result["wall_s"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
