"""A bfloat16 base model with gradient checkpointing trains: loss falls, R stays fp32 and orthonormal."""

from __future__ import annotations

import torch
from _reliability_common import LossLog, make_trainer, one_thread, token_examples  # noqa: F401
from conftest import tiny_llama

from reft import ReftConfig


def test_bf16_base_with_gradient_checkpointing_trains(tmp_path):
    base = tiny_llama(hidden=64, init=0.2).to(torch.bfloat16)
    frozen = {n: p.detach().clone() for n, p in base.named_parameters()}
    log = LossLog()
    trainer = make_trainer(tmp_path, model=base, data=token_examples(4), callbacks=[log], max_steps=30,
                           per_device_train_batch_size=4, learning_rate=2e-2, gradient_checkpointing=True,
                           save_strategy="no", warmup_steps=0, weight_decay=0.0,
                           config=ReftConfig(layers="1;2", positions="f2+l2", tied=False, rank=8, dropout=0.0))
    trainer.train()
    reft_model = trainer.model
    assert getattr(reft_model.model, "is_activation_checkpointing", None) or reft_model.model.is_gradient_checkpointing
    losses = [loss for _, loss in log.points]
    assert len(losses) == 30 and losses[-1] < 0.5 * losses[0], losses
    for key, module in reft_model.interventions.items():
        assert all(p.dtype == torch.float32 for p in module.parameters()), key
        r = module.rotate()
        assert r.dtype == torch.float32
        torch.testing.assert_close(r.T @ r, torch.eye(r.shape[1]), atol=1e-5, rtol=0, msg=key)
    for name, p in base.named_parameters():  # the base stays bf16 and untouched
        assert p.dtype == torch.bfloat16 and torch.equal(p, frozen[name]), name
