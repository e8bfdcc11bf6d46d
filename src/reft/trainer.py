"""`ReftTrainer`: the transformers `Trainer`, saving and resuming only the adapter.

Evaluation, schedules, gradient accumulation, mixed precision and DDP come from `Trainer`/accelerate unchanged.
"""

from __future__ import annotations

import os

import torch
from transformers import Trainer

from .io import WEIGHTS_NAME, load_reft_state_dict, read_adapter


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss."""


class ReftTrainer(Trainer):
    """`Trainer` for a :class:`reft.ReftModel`.

    * ``compute_loss`` passes ``num_items_in_batch`` to the model, so gradient accumulation averages over the
      label tokens of all micro-batches like the plain `Trainer`;
    * checkpoints hold the adapter only (``reft_config.json`` + ``reft_model.safetensors``), written atomically,
      plus `Trainer`'s own optimizer / scheduler / RNG state, so ``train(resume_from_checkpoint=…)`` resumes exactly;
    * a NaN/inf loss stops training with the step named; the last saved checkpoint stays intact.
    """

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if num_items_in_batch is not None and "labels" in inputs and inputs["labels"].dim() == 2:
            inputs = {**inputs, "num_items_in_batch": num_items_in_batch}
        outputs = model(**inputs)
        loss = outputs.loss
        if loss is None:
            raise ValueError("the model returned no loss: the batch needs 'labels'")
        if not torch.isfinite(loss.detach()).all():
            raise NonFiniteLossError(
                f"non-finite loss ({loss.item()}) at step {self.state.global_step + 1}: lower the learning rate or "
                f"check the data; the last good checkpoint is in {self.args.output_dir}"
            )
        return (loss, outputs) if return_outputs else loss

    def _unwrapped(self):
        model = self.model
        while hasattr(model, "module") and not hasattr(model, "reft_config"):
            model = model.module
        return model

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        output_dir = output_dir or self.args.output_dir
        self._unwrapped().save_pretrained(output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        if not os.path.isfile(os.path.join(resume_from_checkpoint, WEIGHTS_NAME)):
            raise FileNotFoundError(f"{resume_from_checkpoint} holds no {WEIGHTS_NAME}: not a reft checkpoint")
        _, state, _ = read_adapter(resume_from_checkpoint)
        load_reft_state_dict(self._unwrapped(), state)

    def _load_best_model(self) -> None:
        self._load_from_checkpoint(self.state.best_model_checkpoint)
