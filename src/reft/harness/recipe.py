"""One supervised ReFT training run, top to bottom: data → ReftTrainer → adapter + loss curve + metrics.

Used by ``reft train`` and the demo; everything it does is available piecewise in the library.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PrinterCallback, TrainerState, TrainingArguments

from ..config import ReftConfig
from ..data import ReftDataCollator, check_fits_context, make_supervised_dataset
from ..model import ReftModel, get_reft_model
from ..quantization import describe_quantization
from ..save_load import atomic_write_file, atomic_write_text
from ..trainer import ReftTrainer
from .interrupt import stop_on_interrupt
from .runs import CHECKPOINTS, claim, last_checkpoint, run_folder

#: the logging integrations a run can report to (all offline)
REPORTERS = ("tensorboard",)
#: where ``report_to=("tensorboard",)`` writes its event files, inside the run folder
TENSORBOARD_DIR = "tensorboard"


@dataclass
class TrainSettings:
    """Optimisation settings (the paper's defaults for small models where it gives them)."""

    epochs: float = 3.0
    lr: float = 4e-3
    batch_size: int = 8
    grad_accum: int = 1
    weight_decay: float = 0.0
    warmup: float = 0.0  # steps, or a fraction of all steps when < 1
    scheduler: str = "linear"
    max_length: int | None = 512
    seed: int = 42
    logging_steps: int = 1
    save_steps: int | None = None
    gradient_checkpointing: bool = False
    shuffle: bool = True
    group_by_length: bool = False  # batches of similar length (less padding); still shuffled between groups
    report_to: tuple[str, ...] = ()  # logging integrations: "tensorboard" writes out_dir/tensorboard (offline)

    def __post_init__(self) -> None:
        """Refuse settings that cannot train, naming the setting and its ``reft train`` flag."""
        for name, flag, integer in (("epochs", "--epochs", False), ("lr", "--lr", False),
                                    ("batch_size", "--batch-size", True), ("grad_accum", None, True),
                                    ("logging_steps", None, True), ("max_length", "--max-length", True),
                                    ("save_steps", "--save-steps", True)):
            value = getattr(self, name)
            if value is None and name in ("max_length", "save_steps"):
                continue
            number = isinstance(value, int if integer else (int, float)) and not isinstance(value, bool)
            if not (number and math.isfinite(value) and value > 0):
                kind = "integer" if integer else "finite number"
                raise ValueError(f"{name}{f' ({flag})' if flag else ''} must be a positive {kind}, got {value!r}")
        for name, flag in (("weight_decay", " (--weight-decay)"), ("warmup", "")):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}{flag} must be a finite number ≥ 0, got {value!r}")
        unknown = [r for r in self.report_to if r not in REPORTERS]
        if isinstance(self.report_to, str) or unknown:
            raise ValueError(f"report_to (--report-to) takes a tuple of {list(REPORTERS)}, got {self.report_to!r}")


def loss_curve(state: TrainerState) -> list[tuple[int, float]]:
    """``(step, loss)`` of every logged training loss in ``state.log_history``: after a resume, the whole run's."""
    return [(int(e["step"]), float(e["loss"])) for e in state.log_history if "loss" in e and "step" in e]


def training_arguments(settings: TrainSettings, output_dir: str | os.PathLike, *, progress: bool = True,
                       **overrides) -> TrainingArguments:
    """`TrainingArguments` for ``settings`` (CPU when no GPU, no reporting integrations); ``overrides`` win."""
    sampling = "group_by_length" if settings.group_by_length else ("random" if settings.shuffle else "sequential")
    kwargs = dict(
        output_dir=os.fspath(output_dir),
        num_train_epochs=settings.epochs,
        learning_rate=settings.lr,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accum,
        weight_decay=settings.weight_decay,
        warmup_steps=settings.warmup,
        lr_scheduler_type=settings.scheduler,
        logging_steps=settings.logging_steps,
        save_strategy="steps" if settings.save_steps else "no",
        save_steps=settings.save_steps or 500,
        seed=settings.seed,
        data_seed=settings.seed,
        report_to=[],
        disable_tqdm=not progress,
        use_cpu=not torch.cuda.is_available(),
        remove_unused_columns=False,
        dataloader_drop_last=False,
        train_sampling_strategy=sampling,
    )
    return TrainingArguments(**(kwargs | overrides))


def reporting_callbacks(settings: TrainSettings, out_dir: str | os.PathLike) -> list:
    """The `Trainer` callbacks for ``settings.report_to``: TensorBoard event files in ``out_dir/tensorboard``."""
    if "tensorboard" not in settings.report_to:
        return []
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ImportError("report_to tensorboard (--report-to tensorboard) needs the tensorboard package: "
                          "pip install 'reft[tensorboard]'") from None
    from transformers.integrations import TensorBoardCallback

    return [TensorBoardCallback(SummaryWriter(log_dir=os.path.join(out_dir, TENSORBOARD_DIR)))]


def plot_loss_curve(points: Sequence[tuple[int, float]], path: str | os.PathLike, title: str = "ReFT training"):
    """Save a PNG of loss against optimiser step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    if points:
        ax.plot([p[0] for p in points], [p[1] for p in points], lw=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write_file(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def write_run_outputs(out_dir: str | os.PathLike, state: TrainerState, metrics: dict[str, Any], *,
                      title: str = "ReFT training") -> dict[str, Any]:
    """``loss_curve.png`` and ``train_metrics.json`` (with ``loss_curve``, the whole run's) into a run folder."""
    curve = loss_curve(state)
    plot_loss_curve(curve, os.path.join(out_dir, "loss_curve.png"), title=title)
    metrics = metrics | {"loss_curve": curve}
    atomic_write_text(os.path.join(out_dir, "train_metrics.json"), json.dumps(metrics, indent=2))
    return metrics


def train_reft(
    model: torch.nn.Module,
    tokenizer,
    config: ReftConfig,
    prompts: Sequence[str],
    responses: Sequence[str],
    out_dir: str | os.PathLike,
    settings: TrainSettings | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    prompt_format: dict[str, Any] | None = None,
) -> tuple[ReftModel, dict]:
    """Train interventions on (prompt, response) pairs and save everything under ``out_dir``.

    Writes ``out_dir/adapter`` (the adapter), ``out_dir/loss_curve.png``, ``out_dir/train_metrics.json``,
    ``out_dir/reft_run.json`` (the run's fingerprint) and Trainer checkpoints in ``out_dir/checkpoints`` when
    ``settings.save_steps`` is set. ``out_dir`` belongs to one run (:mod:`reft.harness.runs`): ``resume=True``
    continues from its newest checkpoint, which must be this run's; without it a folder holding checkpoints is
    refused; a second process is locked out. Ctrl-C finishes the step, saves it as a checkpoint (with
    ``save_steps``) and raises KeyboardInterrupt (:mod:`reft.harness.interrupt`).

    Args:
        prompt_format: how ``prompts`` were rendered (:func:`reft.generation.prompt_format`), stored in the
            adapter's config so evaluation builds prompts the same way. Default: ``config.prompt_format``.

    Raises:
        reft.harness.runs.RunFolderError: a folder this run may not use. ExampleError: an unusable example.
        reft.trainer.NonFiniteLossError: training diverged (the last good checkpoint is named).
    """
    settings = settings or TrainSettings()
    if prompt_format is not None:
        config = dataclasses.replace(config, prompt_format=prompt_format)
    with run_folder(out_dir, resume=resume) as out_dir:
        dataset = make_supervised_dataset(tokenizer, prompts, responses, max_length=settings.max_length,
                                          positions=config.positions, position_rule=config.position_rule)
        check_fits_context(dataset, model)
        torch.manual_seed(settings.seed)
        reft_model = get_reft_model(model, config)
        if settings.gradient_checkpointing:
            reft_model.gradient_checkpointing_enable()
        args = training_arguments(settings, os.path.join(out_dir, CHECKPOINTS), progress=progress)
        trainer = ReftTrainer(model=reft_model, args=args, train_dataset=dataset,
                              data_collator=ReftDataCollator(tokenizer.pad_token_id),
                              callbacks=reporting_callbacks(settings, out_dir))
        if not progress:
            trainer.remove_callback(PrinterCallback)  # logs go to the loss curve and metrics file instead
        if not settings.shuffle:
            trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(dataset)
        claim(out_dir, trainer.run_fingerprint())
        last = last_checkpoint(out_dir) if resume else None
        if resume and last is None:
            warnings.warn(f"nothing to resume in {os.path.join(out_dir, CHECKPOINTS)}: training from step 0",
                          stacklevel=2)
        with stop_on_interrupt(trainer):
            result = trainer.train(resume_from_checkpoint=last)
        run_info = {"examples": len(dataset), "epochs": settings.epochs, "learning rate": settings.lr,
                    "batch size": settings.batch_size, "steps": trainer.state.global_step,
                    "metrics": {k: v for k, v in result.metrics.items() if k in ("train_loss", "train_runtime")}}
        stored = describe_quantization(model)
        if stored is not None:
            run_info["base weights"] = stored
        reft_model.save_pretrained(os.path.join(out_dir, "adapter"), training=run_info)
        trainable = sum(p.numel() for p in reft_model.parameters() if p.requires_grad)
        metrics = write_run_outputs(out_dir, trainer.state, dict(result.metrics) | {
            "examples": len(dataset), "trainable_parameters": trainable, "resumed_from": last})
    return reft_model, metrics
