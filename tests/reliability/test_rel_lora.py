"""LoReFT + LoRA (the paper's combined setting): both train, both save, reload gives identical logits."""

from __future__ import annotations

import os

import pytest
import torch
from _reliability_common import LossLog, make_trainer, one_thread, token_examples  # noqa: F401
from conftest import random_batch, tiny_llama

from reft import ReftConfig, ReftModel, get_reft_model
from reft.data import ReftDataCollator

peft = pytest.importorskip("peft", reason="peft is in the [tasks] extra")  # installed in the dev venv
LORA = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0, init_lora_weights=False)
CONFIG = ReftConfig(layers="1;2", positions="f1+l2", tied=False, rank=4)


def _lora_reft(config: ReftConfig = CONFIG):
    torch.manual_seed(0)
    peft_model = peft.get_peft_model(tiny_llama(init=0.2), peft.LoraConfig(**LORA))
    return peft_model, get_reft_model(peft_model, config)


def _names(module, trainable: bool) -> set[str]:
    return {n for n, p in module.named_parameters() if p.requires_grad == trainable}


def test_both_adapters_train_and_reload_identically(tmp_path):
    peft_model, reft_model = _lora_reft()
    trainable = _names(reft_model, True)
    ours = "adapters.default.interventions."
    assert trainable and all("lora_" in n or n.startswith(ours) for n in trainable)
    assert any("lora_" in n for n in trainable) and any(n.startswith(ours) for n in trainable)
    assert not any("lora_" in n for n in _names(reft_model, False))  # nothing of LoRA frozen, the rest is
    batch = ReftDataCollator(0)(token_examples(4))
    before = {n: p.detach().clone() for n, p in reft_model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW([p for p in reft_model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(15):
        loss = reft_model(**batch).loss
        opt.zero_grad()
        loss.backward()
        for name, p in reft_model.named_parameters():
            if p.requires_grad:
                assert p.grad is not None and p.grad.abs().sum() > 0, name  # gradients reach both adapters
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5
    assert all(not torch.equal(p, before[n]) for n, p in reft_model.named_parameters() if p.requires_grad)

    peft_model.save_pretrained(tmp_path / "lora")
    reft_model.save_pretrained(tmp_path / "reft")
    assert sorted(os.listdir(tmp_path / "reft")) == ["README.md", "reft_config.json", "reft_model.safetensors"]
    reloaded = ReftModel.from_pretrained(peft.PeftModel.from_pretrained(tiny_llama(init=0.2), tmp_path / "lora"),
                                         tmp_path / "reft")
    ids, mask = random_batch([7, 5], "left")
    reft_model.eval()
    expected = reft_model(ids, attention_mask=mask).logits
    torch.testing.assert_close(reloaded(ids, attention_mask=mask).logits, expected, rtol=0, atol=1e-6)
    with reft_model.disable_interventions():
        assert not torch.allclose(reft_model(ids, attention_mask=mask).logits, expected)
    # generation intervenes during prefill through the peft wrapper too
    out = reloaded.generate(ids, attention_mask=mask, max_new_tokens=1, do_sample=False, output_logits=True,
                            return_dict_in_generate=True)
    torch.testing.assert_close(out.logits[0], expected[:, -1], rtol=0, atol=1e-5)


def test_lora_gradients_include_the_prompt_prefix():
    """The frozen-prefix shortcut must not apply when LoRA trains: gradients equal the plain full forward."""
    grads = []
    for split in (True, False):
        _, reft_model = _lora_reft(ReftConfig(layers="1;2", positions="l1", rank=4))  # edits start late
        reft_model.split_frozen_prefix = split
        reft_model(**ReftDataCollator(0)(token_examples(4))).loss.backward()
        grads.append({n: p.grad.clone() for n, p in reft_model.named_parameters() if p.requires_grad})
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-7, msg=name)


def test_trainer_checkpoints_hold_and_resume_both_adapters(tmp_path):
    def trainer(callbacks):
        torch.manual_seed(0)
        peft_model = peft.get_peft_model(tiny_llama(init=0.2), peft.LoraConfig(**LORA))
        return make_trainer(tmp_path / "run", config=CONFIG, model=peft_model, callbacks=callbacks, max_steps=4)

    full = LossLog()
    reference = trainer([full])
    reference.args.output_dir = str(tmp_path / "full")
    reference.train()
    first = LossLog(stop_at=2)
    trainer([first]).train()
    files = sorted(os.listdir(tmp_path / "run" / "checkpoint-2"))
    assert {"adapter_model.safetensors", "adapter_config.json", "reft_model.safetensors"} <= set(files)
    second = LossLog()
    resumed = trainer([second])
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    assert first.points + second.points == full.points
    for (name, p), q in zip(resumed.model.named_parameters(), reference.model.parameters()):
        assert torch.equal(p, q), name
