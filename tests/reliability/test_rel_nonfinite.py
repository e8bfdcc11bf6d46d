"""Non-finite numbers never pass silently: gradients and weights stop training, saving and loading refuse them,
settings that cannot train are refused up front."""

from __future__ import annotations

import math
import os

import pytest
import torch
from _reliability_common import intervention_state, make_trainer, one_thread  # noqa: F401
from conftest import tiny_llama
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback

from reft import ReftModel
from reft.harness.recipe import TrainSettings
from reft.save_load import WEIGHTS_NAME
from reft.trainer import NonFiniteLossError


class _NanGradientAt(TrainerCallback):
    """Makes one parameter's gradient NaN in the backward pass of optimizer step ``step`` (the loss stays finite)."""

    def __init__(self, step: int) -> None:
        self.step, self.armed, self.handle = step, False, None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        param = model.interventions["layer2_last"].source.weight
        self.handle = param.register_hook(lambda g: g * math.nan if self.armed else g)

    def on_step_begin(self, args, state, control, **kwargs):
        self.armed = state.global_step + 1 == self.step


class _WeightsPerStep(TrainerCallback):
    def __init__(self) -> None:
        self.weights: dict[int, dict[str, torch.Tensor]] = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.weights[state.global_step] = {k: v.detach().clone() for k, v in model.interventions.state_dict().items()}


def test_a_non_finite_gradient_stops_before_the_optimizer_step(tmp_path):
    kept = _WeightsPerStep()
    trainer = make_trainer(tmp_path, callbacks=[_NanGradientAt(3), kept], save_steps=2)
    with pytest.raises(NonFiniteLossError, match=r"non-finite gradient \(nan in \S+\) at step 3: lower the learning "
                                                 r"rate .*the last good checkpoint is .*checkpoint-2"):
        trainer.train()
    after = intervention_state(trainer)
    assert all(torch.isfinite(v).all() for v in after.values())  # the step never ran …
    assert all(torch.equal(after[k], kept.weights[2][k]) for k in after)  # … the weights are step 2's
    ReftModel.from_pretrained(tiny_llama(init=0.2), tmp_path / "checkpoint-2")


def test_a_non_finite_weight_after_a_step_stops_training(tmp_path):
    """lr = inf: the loss and gradients of step 1 are finite, the weights it leaves are not. Before: a run of one
    step ended normally and saved an all-NaN adapter."""
    trainer = make_trainer(tmp_path, max_steps=1, learning_rate=math.inf, warmup_steps=0, save_steps=1)
    with pytest.raises(NonFiniteLossError, match=r"non-finite weight \((nan|inf) in \S+\) at step 1: .*no checkpoint "
                                                 "was saved before it"):
        trainer.train()
    assert os.listdir(tmp_path) == []  # no checkpoint of the broken weights
    with pytest.raises(ValueError, match=r"refusing to save an adapter with non-finite weights: layer1_first\.\S+ "
                                         r"\((nan|inf)\).*lower the learning rate"):
        trainer.model.save_pretrained(tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()


def test_loading_refuses_non_finite_weights(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=1)
    trainer.train()
    weights = tmp_path / "checkpoint-1" / WEIGHTS_NAME
    state = load_file(weights)
    key = sorted(state)[0]
    state[key] = torch.full_like(state[key], math.inf)
    save_file(state, weights, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"holds non-finite weights \({key} \(inf\)\): the run that wrote it "
                                         "diverged; use an earlier checkpoint"):
        ReftModel.from_pretrained(tiny_llama(init=0.2), tmp_path / "checkpoint-1")
    with pytest.raises(ValueError, match="holds non-finite weights"):  # resuming from it, before any step
        make_trainer(tmp_path, max_steps=2).train(resume_from_checkpoint=str(tmp_path / "checkpoint-1"))


@pytest.mark.parametrize("setting,value,message", [
    ("lr", math.inf, r"lr \(--lr\) must be a positive finite number"),
    ("lr", math.nan, r"lr \(--lr\) must be a positive finite number"),
    ("lr", 0.0, r"lr \(--lr\) must be a positive finite number, got 0\.0"),
    ("epochs", 0, r"epochs \(--epochs\) must be a positive finite number, got 0"),
    ("batch_size", 0, r"batch_size \(--batch-size\) must be a positive integer"),
    ("weight_decay", math.nan, r"weight_decay \(--weight-decay\) must be a finite number ≥ 0"),
    ("max_length", 0, r"max_length \(--max-length\) must be a positive integer"),
])
def test_settings_that_cannot_train_are_refused_naming_the_flag(setting, value, message):
    with pytest.raises(ValueError, match=message):
        TrainSettings(**{setting: value})
