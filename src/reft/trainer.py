"""`ReftTrainer`: the transformers `Trainer`, saving and resuming only the adapter.

Evaluation, schedules, gradient accumulation, mixed precision and DDP come from `Trainer`/accelerate unchanged.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
import shutil
import warnings
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint, rotate_checkpoints

from .data import IGNORE_INDEX
from .data_files import is_hf_dataset
from .model.layers import is_peft_model
from .positions import PositionSpec, parse_positions, split_counts
from .quantization import quantization_of
from .save_load import (
    WEIGHTS_NAME,
    atomic_write_text,
    fsync_tree,
    load_reft_state_dict,
    read_adapter,
    replace_directory,
    write_adapter_files,
)

PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
#: the run fingerprint written into every checkpoint (and by ``reft train`` into the run folder)
RUN_NAME = "reft_run.json"
#: the `TrainingArguments` that shape what training computes. The length of a run (epochs, max_steps) is left out:
#: continuing a run for longer is a resume.
SHAPING_ARGS = ("learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps", "weight_decay",
                "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm", "optim", "lr_scheduler_type",
                "lr_scheduler_kwargs", "warmup_steps", "warmup_ratio", "seed", "data_seed", "train_sampling_strategy",
                "group_by_length", "dataloader_drop_last", "label_smoothing_factor", "bf16", "fp16")


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss, gradient or weight; the message names the step and the last checkpoint."""


def _jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return _jsonable(value.value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return sorted(_jsonable(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def dataset_fingerprint(dataset) -> dict[str, Any] | None:
    """``{"examples", "sha256"}`` of a list of examples (every field, in order); a 🤗 ``datasets.Dataset`` gives its
    own fingerprint; None for other datasets (streams), which are then not compared."""
    if isinstance(dataset, (list, tuple)):
        digest = hashlib.sha256()
        for example in dataset:
            digest.update(json.dumps(_jsonable(example), sort_keys=True).encode("utf-8") + b"\n")
        return {"examples": len(dataset), "sha256": digest.hexdigest()}
    own = getattr(dataset, "_fingerprint", None)
    if isinstance(own, str):
        return {"examples": len(dataset), "datasets_fingerprint": own}
    return None


def training_fingerprint(args, dataset, model) -> dict[str, Any]:
    """What a run is: the model's adapters (``reft_config``, the peft config of a peft model, ``num_labels``, how a
    quantized base is stored), the
    training data (:func:`dataset_fingerprint`) and the `TrainingArguments` in :data:`SHAPING_ARGS`."""
    adapters: dict[str, Any] = {}
    config = getattr(model, "reft_config", None)
    if config is not None:
        adapters["reft_config"] = config.to_dict()
    peft_model = model if hasattr(model, "peft_config") else _peft_model(model)
    if peft_model is not None:
        adapters["peft_config"] = {k: v.to_dict() for k, v in peft_model.peft_config.items()}
    if isinstance(getattr(model, "num_labels", None), int):
        adapters["num_labels"] = model.num_labels
    quantized = quantization_of(model)
    if quantized is not None:  # resuming on a base stored otherwise would change the numbers
        adapters["base_quantization"] = quantized
    return {"format": 1, "model": _jsonable(adapters), "data": dataset_fingerprint(dataset),
            "training": {name: _jsonable(getattr(args, name, None)) for name in SHAPING_ARGS}}


def fingerprint_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``"training.learning_rate: 0.004 (checkpoint) vs 0.001 (this run)"`` for every leaf that differs."""

    def flat(d: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(d, dict):
            return {prefix[:-1]: d}
        return {k: v for key, value in d.items() for k, v in flat(value, f"{prefix}{key}.").items()}

    def show(v: Any) -> str:
        return repr(v[:12] + "…") if isinstance(v, str) and len(v) > 16 else repr(v)

    a, b = flat(saved), flat(current)
    if saved.get("data") is None or current.get("data") is None:  # a stream on either side: not comparable
        a, b = ({k: v for k, v in d.items() if not k.startswith("data")} for d in (a, b))
    return [f"{k}: {show(a.get(k))} (checkpoint) vs {show(b.get(k))} (this run)"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _last_good(args) -> str:
    last = get_last_checkpoint(args.output_dir) if os.path.isdir(args.output_dir) else None
    return f"the last good checkpoint is {last}" if last else "no checkpoint was saved before it"


class FiniteGuard(TrainerCallback):
    """Stops training (:class:`NonFiniteLossError`) at the first non-finite gradient (before the optimizer step) or
    weight (after it) of a trainable parameter. :class:`ReftTrainer` adds it; add it to a plain `Trainer` with
    ``callbacks=[FiniteGuard()]``."""

    @staticmethod
    def _check(model, kind: str, args, state) -> None:
        named = [(n, p.grad if kind == "gradient" else p) for n, p in model.named_parameters() if p.requires_grad]
        named = [(n, t) for n, t in named if t is not None]
        if not named:
            return
        finite = torch.stack([torch.isfinite(t.detach()).all() for _, t in named])
        if bool(finite.all()):
            return
        name, tensor = named[int((~finite).nonzero()[0])]
        value = "nan" if bool(torch.isnan(tensor).any()) else "inf"
        raise NonFiniteLossError(f"non-finite {kind} ({value} in {name}) at step {state.global_step + 1}: lower the "
                                 f"learning rate or check the data; {_last_good(args)}")

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if model is not None and not args.fp16:  # fp16 loss scaling skips steps with inf gradients by design
            self._check(model, "gradient", args, state)

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        if model is not None:
            self._check(model, "weight", args, state)


def _peft_model(model):
    """The peft model under a ReftModel, or None."""
    base = getattr(model, "model", None)
    return base if is_peft_model(base) else None


#: parameters never decayed: torch's Householder chart reads X's diagonal only through ``int()``
NO_DECAY = ("parametrizations.weight.original",)


class ReftTrainerMixin:
    """What every trainer of a :class:`reft.ReftModel` adds to its `Trainer` (this one's, or TRL's in
    :mod:`reft.integrations.trl`):

    * checkpoints hold the adapter only (``reft_config.json`` + ``reft_model.safetensors``; plus peft's
      ``adapter_model.safetensors`` + ``adapter_config.json`` when the base is a peft model, e.g. LoReFT + LoRA)
      and `Trainer`'s own optimizer / scheduler / RNG state, so ``train(resume_from_checkpoint=…)`` resumes
      exactly (bitwise with the frozen-block cache off, up to fp32 rounding with it on: docs/reliability.md).
      transformers (≥ 4.57) reads that state back with ``torch.load(weights_only=True)``;
    * each ``checkpoint-N`` folder appears atomically: it is written as ``.staging-checkpoint-N/checkpoint-N`` and
      renamed into place once complete, so a crash mid-save leaves the previous checkpoint as the newest one. This
      needs ``_save_checkpoint`` / ``_get_output_dir``: `Trainer` writes the folder's files (optimizer, scheduler,
      RNG per rank, state) from inside ``_save_checkpoint`` into ``_get_output_dir()/checkpoint-N`` and offers no
      public hook between writing and publishing; the override only redirects that folder and renames it after;
    * the training data is checked before the first step: examples whose labels are all masked are refused,
      and positions that no training prompt is long enough to hold raise a warning (see docs/reliability.md);
    * a NaN/inf loss, gradient or weight stops training with the step named (:class:`NonFiniteLossError`); the
      last saved checkpoint stays intact;
    * every checkpoint holds the run's fingerprint (``reft_run.json``: adapter config, data, the arguments that
      shape training, :meth:`run_fingerprint`); resuming from a checkpoint of another run stops with the
      differences named;
    * the model's frozen-block cache (``ReftModel.frozen_cache``, filled in epoch 1, reused after) and its prefix
      cache (``ReftModel.prefix_cache``) are emptied when ``train`` returns, so their memory goes back;
    * weight decay skips the X of ``rotation="householder"`` (:data:`NO_DECAY`, see
      :class:`reft.interventions.orthogonal.HouseholderBasis`): decaying it would zero R.
    """

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        return [n for n in super().get_decay_parameter_names(model) if not n.endswith(NO_DECAY)]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.add_callback(FiniteGuard())
        self._fingerprint: tuple[int, dict[str, Any]] | None = None
        if self.train_dataset is not None:
            self._check_train_data(self.train_dataset)

    def run_fingerprint(self) -> dict[str, Any]:
        """What this run is (:func:`training_fingerprint`): the adapter config (and the peft config of a peft base),
        the training data, and the arguments in :data:`SHAPING_ARGS`. Written into every checkpoint as
        ``reft_run.json`` and compared on resume."""
        if self._fingerprint is None or self._fingerprint[0] != id(self.train_dataset):
            fingerprint = training_fingerprint(self.args, self.train_dataset, self._unwrapped())
            self._fingerprint = (id(self.train_dataset), fingerprint)
        return self._fingerprint[1]

    def check_resume(self, checkpoint: str | os.PathLike) -> None:
        """Refuse (``ValueError``, naming the differences) a checkpoint whose ``reft_run.json`` is another run's.

        A checkpoint without one (an older reft) only warns."""
        path = os.path.join(checkpoint, RUN_NAME)
        if not os.path.isfile(path):
            warnings.warn(f"{checkpoint} has no {RUN_NAME} (written by an older reft): cannot check that it belongs "
                          "to this run", stacklevel=2)
            return
        try:
            with open(path, encoding="utf-8") as f:
                saved = json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(f"{path} is unreadable ({e}): the checkpoint is damaged; resume from an earlier "
                             "one") from None
        diffs = fingerprint_differences(saved, self.run_fingerprint())
        if diffs:
            raise ValueError(f"{checkpoint} belongs to another run: {'; '.join(diffs)}. Resume with that run's data "
                             "and settings, or train into a new output folder")

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        """`Trainer.train`; a checkpoint to resume from must be this run's (:meth:`check_resume`)."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir) or True  # True: Trainer's own error
        if isinstance(resume_from_checkpoint, (str, os.PathLike)):
            self.check_resume(resume_from_checkpoint)
        try:
            return super().train(resume_from_checkpoint, *args, **kwargs)
        finally:
            for name in ("frozen_cache", "prefix_cache"):
                cache = getattr(self._unwrapped(), name, None)
                if cache is not None:
                    cache.clear()

    # ---- checks ----------------------------------------------------------------------------------------------
    def _check_train_data(self, dataset) -> None:
        """Refuse examples with no label token; warn when no prompt can hold all requested positions."""
        if is_hf_dataset(dataset) and hasattr(dataset, "__getitem__"):
            columns = [c for c in ("labels", "prompt_lengths") if c in dataset.column_names]
            if not columns:
                return  # e.g. TRL's tokenized data (completion_mask): its own checks apply
            dataset = dataset.select_columns(columns).to_list()  # a 🤗 datasets.Dataset: its label columns, read once
        if not isinstance(dataset, (list, tuple)) or not dataset or not isinstance(dataset[0], dict):
            return  # streaming / custom datasets are checked per batch (collator, compute_loss)
        for i, example in enumerate(dataset):
            labels = example.get("labels")
            if isinstance(labels, (list, tuple)) and all(t == IGNORE_INDEX for t in labels):
                raise ValueError(
                    f"training example {i} has every label masked ({IGNORE_INDEX}): it teaches nothing; drop it or "
                    "give it a non-empty response (check that max_length does not cut the response away)"
                )
        config = getattr(self._unwrapped(), "reft_config", None)
        lengths = [e["prompt_lengths"] for e in dataset if isinstance(e.get("prompt_lengths"), int)]
        if config is None or not lengths:
            return
        spec = parse_positions(config.positions)
        fits = split_counts(max(lengths), spec.first, spec.last, config.position_rule)
        if fits != (spec.first, spec.last):
            warnings.warn(
                f"positions {config.positions!r} ask for {spec.width} prompt tokens but the longest training prompt "
                f"({max(lengths)} tokens) gets {sum(fits)} under position_rule {config.position_rule!r}: every "
                f"example is shortened by the ⌊n/2⌋ rule. Choose fewer positions (at most "
                f"{str(PositionSpec(*fits)) or 'none'}) or longer prompts",
                stacklevel=3,
            )

    # ---- saving ----------------------------------------------------------------------------------------------
    def _unwrapped(self):
        model = self.model
        while hasattr(model, "module") and not hasattr(model, "reft_config"):
            model = model.module
        return model

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        if not self.args.should_save:
            return
        output_dir = output_dir or self.args.output_dir
        reft_model = self._unwrapped()
        write_adapter_files(reft_model, output_dir)
        peft_model = _peft_model(reft_model)
        if peft_model is not None:
            peft_model.save_pretrained(output_dir, safe_serialization=True)

    def _save_checkpoint(self, model, trial) -> None:
        """`Trainer._save_checkpoint` into a staging folder, then one rename makes ``checkpoint-N`` appear."""
        run_dir = self._get_output_dir(trial=trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        final = os.path.join(run_dir, name)
        staging = os.path.join(run_dir, f".staging-{name}")
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)  # left over by a crash
        self.accelerator.wait_for_everyone()
        self._staging_dir = staging
        try:
            super()._save_checkpoint(model, trial)
        except BaseException:
            if self.args.should_save:
                shutil.rmtree(staging, ignore_errors=True)
            raise
        finally:
            self._staging_dir = None
        self.accelerator.wait_for_everyone()  # every rank has written its files (rng_state_<rank>.pth)
        if self.args.should_save:
            # Trainer resolved the best checkpoint against the staging folder: resolve it against run_dir
            best = self.state.best_global_step
            if best:
                best_dir = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{best}")
                if best == self.state.global_step or os.path.isdir(best_dir):
                    self.state.best_model_checkpoint = best_dir
                self.state.save_to_json(os.path.join(staging, name, "trainer_state.json"))
            atomic_write_text(os.path.join(staging, name, RUN_NAME), json.dumps(self.run_fingerprint(), indent=2))
            fsync_tree(os.path.join(staging, name))
            replace_directory(os.path.join(staging, name), final)  # saving the same step again swaps it
            shutil.rmtree(staging, ignore_errors=True)
            rotate_checkpoints(run_dir, self.args.save_total_limit, self.state.best_model_checkpoint, use_mtime=True)
        self.accelerator.wait_for_everyone()

    def _get_output_dir(self, trial) -> str:
        staging = getattr(self, "_staging_dir", None)
        return staging if staging is not None else super()._get_output_dir(trial)

    # ---- loading ---------------------------------------------------------------------------------------------
    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        if not os.path.isfile(os.path.join(resume_from_checkpoint, WEIGHTS_NAME)):
            raise FileNotFoundError(f"{resume_from_checkpoint} holds no {WEIGHTS_NAME}: not a reft checkpoint")
        _, state, _ = read_adapter(resume_from_checkpoint)
        reft_model = self._unwrapped()
        load_reft_state_dict(reft_model, state)
        peft_model = _peft_model(reft_model)
        if peft_model is not None:
            path = os.path.join(resume_from_checkpoint, PEFT_WEIGHTS_NAME)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{resume_from_checkpoint} holds no {PEFT_WEIGHTS_NAME}: the base is a peft "
                                        "model but the checkpoint has no peft adapter")
            from peft import set_peft_model_state_dict

            result = set_peft_model_state_dict(peft_model, load_file(path))
            if getattr(result, "unexpected_keys", None):
                raise ValueError(f"peft adapter in {resume_from_checkpoint} does not fit the model: unexpected "
                                 f"{result.unexpected_keys[:5]}")

    def _load_best_model(self) -> None:
        self._load_from_checkpoint(self.state.best_model_checkpoint)


class ReftTrainer(ReftTrainerMixin, Trainer):
    """`Trainer` for a :class:`reft.ReftModel`: everything of :class:`ReftTrainerMixin`, and ``compute_loss``
    passes ``num_items_in_batch`` to the model, so gradient accumulation averages over the label tokens of all
    micro-batches like the plain `Trainer`.
    """

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.get("labels")
        token_sum = isinstance(labels, torch.Tensor) and labels.dim() == 2 and num_items_in_batch is not None
        if isinstance(labels, torch.Tensor) and labels.dim() == 2:
            if not bool((labels != IGNORE_INDEX).any()) and not num_items_in_batch:
                raise ValueError(
                    f"every label in this batch is masked ({IGNORE_INDEX}): the loss is undefined; check that the "
                    "responses are not empty and max_length does not cut them away"
                )
        if token_sum:
            inputs = {**inputs, "num_items_in_batch": num_items_in_batch}
        outputs = model(**inputs)
        loss = outputs.loss
        if loss is None:
            raise ValueError("the model returned no loss: the batch needs 'labels'")
        if token_sum and self.args.average_tokens_across_devices and self.model.training:
            # num_items_in_batch counts the label tokens of *all* processes; DDP averages gradients over them, so
            # scale back up as Trainer.compute_loss does (otherwise N processes train with 1/N of the gradient)
            tp = self.get_tp_size() if hasattr(self, "get_tp_size") else 1
            loss = loss * (self.accelerator.num_processes // tp if self.args.n_gpu <= 1 else self.args.n_gpu)
        elif num_items_in_batch is not None and not token_sum and self.model.training:
            # a per-batch mean (classification): Trainer skips its division by the accumulation steps whenever
            # num_items_in_batch is given to a model with **kwargs, so divide here
            loss = loss / getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)
        if not torch.isfinite(loss.detach()).all():
            raise NonFiniteLossError(f"non-finite loss ({loss.item()}) at step {self.state.global_step + 1}: lower "
                                     f"the learning rate or check the data; {_last_good(self.args)}")
        return (loss, outputs) if return_outputs else loss
