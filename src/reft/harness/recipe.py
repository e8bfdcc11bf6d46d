"""One supervised ReFT training run, top to bottom: data → ReftTrainer → adapter + loss curve + metrics.

Used by ``reft train`` and the demo; everything it does is available piecewise in the library.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PrinterCallback, TrainerCallback, TrainingArguments

from ..config import ReftConfig
from ..data import ReftDataCollator, make_supervised_dataset
from ..model import ReftModel, get_reft_model
from ..save_load import atomic_write_text
from ..trainer import ReftTrainer


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


class _LossLog(TrainerCallback):
    def __init__(self) -> None:
        self.points: list[tuple[int, float]] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.points.append((state.global_step, float(logs["loss"])))


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
    fig.savefig(path)
    plt.close(fig)


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
) -> tuple[ReftModel, dict]:
    """Train interventions on (prompt, response) pairs and save everything under ``out_dir``.

    Writes ``out_dir/adapter`` (the adapter), ``out_dir/loss_curve.png``, ``out_dir/train_metrics.json`` and
    Trainer checkpoints in ``out_dir/checkpoints`` when ``settings.save_steps`` is set (``resume=True`` continues
    from the newest one).
    """
    settings = settings or TrainSettings()
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(settings.seed)
    reft_model = get_reft_model(model, config)
    if settings.gradient_checkpointing:
        reft_model.gradient_checkpointing_enable()
    dataset = make_supervised_dataset(tokenizer, prompts, responses, max_length=settings.max_length,
                                      positions=config.positions)
    args = training_arguments(settings, os.path.join(out_dir, "checkpoints"), progress=progress)
    log = _LossLog()
    trainer = ReftTrainer(model=reft_model, args=args, train_dataset=dataset, callbacks=[log],
                          data_collator=ReftDataCollator(tokenizer.pad_token_id))
    if not progress:
        trainer.remove_callback(PrinterCallback)  # logs go to the loss curve and metrics file instead
    if not settings.shuffle:
        trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(dataset)
    last = _last_checkpoint(args.output_dir) if resume else None
    result = trainer.train(resume_from_checkpoint=last)
    reft_model.save_pretrained(os.path.join(out_dir, "adapter"))
    plot_loss_curve(log.points, os.path.join(out_dir, "loss_curve.png"))
    metrics = dict(result.metrics) | {"loss_curve": log.points, "examples": len(dataset),
                                      "trainable_parameters": sum(p.numel() for p in reft_model.parameters()
                                                                  if p.requires_grad)}
    atomic_write_text(os.path.join(out_dir, "train_metrics.json"), json.dumps(metrics, indent=2))
    return reft_model, metrics


def _last_checkpoint(directory: str) -> str | None:
    if not os.path.isdir(directory):
        return None
    steps = [int(d.split("-")[1]) for d in os.listdir(directory) if d.startswith("checkpoint-")]
    return os.path.join(directory, f"checkpoint-{max(steps)}") if steps else None

