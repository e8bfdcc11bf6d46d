"""Every intervention type on every architecture family: attach → train step → save → load → identical outputs."""

from __future__ import annotations

import pytest
import torch
from conftest import random_batch, tiny_bert, tiny_gpt2, tiny_llama

from reft import INTERVENTIONS, ReftConfig, ReftModel, get_reft_model

ARCHS = {"llama": tiny_llama, "gpt2": tiny_gpt2, "bert": tiny_bert}
KINDS = ["loreft", "noreft", "consreft", "lobireft", "direft", "orthodireft"]


def test_the_matrix_covers_every_registered_builtin():
    assert set(KINDS) <= set(INTERVENTIONS)


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("kind", KINDS)
def test_attach_train_save_load(tmp_path, arch, kind):
    decoder = arch != "bert"
    cfg = ReftConfig(layers="0;1", positions="f1+l2", tied=False, rank=2, intervention=kind)
    reft_model = get_reft_model(ARCHS[arch](), cfg, num_labels=None if decoder else 3).train()
    ids, mask = random_batch([6, 4, 5], "right", seed=1)
    if decoder:
        labels = ids.masked_fill(mask == 0, -100)
        labels[:, :3] = -100
    else:
        labels = torch.tensor([0, 2, 1])
    before = {k: v.clone() for k, v in reft_model.adapters["default"].state_dict().items()}
    opt = torch.optim.SGD([p for p in reft_model.parameters() if p.requires_grad], lr=0.5)
    loss = reft_model(ids, attention_mask=mask, labels=labels).loss
    assert torch.isfinite(loss)
    loss.backward()
    opt.step()
    after = reft_model.adapters["default"].state_dict()
    assert any(not torch.equal(after[k], before[k]) for k in before), "the step moved nothing"
    reft_model.eval()
    out = reft_model(ids, attention_mask=mask)
    reft_model.save_pretrained(tmp_path)
    loaded = ReftModel.from_pretrained(ARCHS[arch](), tmp_path)
    assert type(loaded) is type(reft_model)
    again = loaded(ids, attention_mask=mask)
    assert torch.equal(again.logits, out.logits)  # the same computation in the same shapes: bitwise
