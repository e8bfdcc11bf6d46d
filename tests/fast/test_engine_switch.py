"""The engine's one switch, and its safety next to accelerate's device hooks (which also shadow block.forward)."""

from __future__ import annotations

import torch
from accelerate.hooks import ModelHook, add_hook_to_module
from conftest import lm_batch, nonzero_init, tiny_llama

from reft import ReftConfig, get_reft_model
from reft.fast import engine
from reft.model.layers import find_layers


def test_fast_training_off_is_the_plain_forward(monkeypatch):
    calls = []
    original = engine.lm_loss
    monkeypatch.setattr(engine, "lm_loss", lambda *a, **k: calls.append(1) or original(*a, **k))
    reft_model = get_reft_model(tiny_llama(), ReftConfig(layers="1;2", positions="f1+l1", rank=2))
    nonzero_init(reft_model)
    batch = lm_batch()
    reft_model.fast_training = False
    plain = reft_model(**batch)
    assert calls == [] and plain.logits is not None  # the base model's own loss, full logits
    reft_model.fast_training = True
    fast = reft_model(**batch)
    assert calls == [1] and fast.logits is None
    torch.testing.assert_close(fast.loss, plain.loss, rtol=1e-5, atol=1e-6)


class _Counting(ModelHook):
    def __init__(self):
        self.calls = 0

    def pre_forward(self, module, *args, **kwargs):
        self.calls += 1
        return args, kwargs


def test_frozen_replay_keeps_accelerate_hooks_in_place():
    reft_model = get_reft_model(tiny_llama(), ReftConfig(layers="2;3", positions="l1", rank=2))
    nonzero_init(reft_model)
    blocks = find_layers(reft_model.model)
    hook = _Counting()
    add_hook_to_module(blocks[0], hook)  # sets blocks[0].forward on the instance, as device_map offloading does
    hooked_forward = blocks[0].__dict__["forward"]
    batch = lm_batch()
    with torch.no_grad():
        first = reft_model(**batch).loss  # epoch 1: computes and stores h_2
        calls = hook.calls
        again = reft_model(**batch).loss  # epoch 2: replays blocks 0..2
    assert reft_model.frozen_cache.replays == 1 and hook.calls == calls  # skipped, not run
    assert blocks[0].__dict__["forward"] is hooked_forward  # accelerate's forward is back, not deleted
    torch.testing.assert_close(again, first, rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        reft_model.frozen_cache.clear()
        reft_model(**batch)
    assert hook.calls > calls  # and it runs again when blocks compute
