"""Adapters: safetensors + JSON, identical after reload, refused on the wrong base, atomic writes."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import random_batch, tiny_bert, tiny_gpt2, tiny_llama
from torch import nn

from reft import ReftConfig, ReftModel, get_reft_model
from reft.save_load import WEIGHTS_NAME, atomic_directory


def _trained(model, **cfg):
    reft_model = get_reft_model(model, ReftConfig(**({"layers": "1;2", "positions": "f2+l2", "tied": False} | cfg)))
    torch.manual_seed(7)
    for p in reft_model.intervention_parameters():
        nn.init.normal_(p, std=0.5)
    return reft_model.eval()


@pytest.mark.parametrize("kind,rotation", [(k, "qr") for k in ("loreft", "noreft", "consreft", "lobireft", "direft",
                                                                  "orthodireft")]
                         + [("loreft", "householder"), ("orthodireft", "householder")])
def test_save_load_identical_logits(tmp_path, kind, rotation):
    reft_model = _trained(tiny_llama(), intervention=kind, act="gelu" if kind == "loreft" else None, rotation=rotation)
    ids, mask = random_batch([8, 5], "left")
    before = reft_model(ids, attention_mask=mask).logits
    reft_model.save_pretrained(tmp_path / "adapter")
    assert sorted(os.listdir(tmp_path / "adapter")) == ["README.md", "reft_config.json", WEIGHTS_NAME]
    cfg = json.loads((tmp_path / "adapter" / "reft_config.json").read_text())
    assert cfg["hidden_size"] == 32 and cfg["num_layers"] == 4 and cfg["model_type"] == "llama"
    assert cfg["intervention"] == kind and cfg["layers"] == [1, 2] and cfg["positions"] == "f2+l2"
    assert cfg["rotation"] == rotation
    loaded = ReftModel.from_pretrained(tiny_llama(), tmp_path / "adapter")
    assert torch.equal(loaded(ids, attention_mask=mask).logits, before)
    assert not any(p.requires_grad for p in loaded.parameters())


def test_classification_head_round_trip(tmp_path):
    reft_model = get_reft_model(tiny_bert(), ReftConfig(layers="all", positions="f1", rank=2), num_labels=3).eval()
    ids, mask = random_batch([6, 4])
    before = reft_model(ids, attention_mask=mask).logits
    reft_model.save_pretrained(tmp_path / "cls")
    loaded = ReftModel.from_pretrained(tiny_bert(), tmp_path / "cls")
    assert loaded.num_labels == 3
    torch.testing.assert_close(loaded(ids, attention_mask=mask).logits, before)


def test_mismatched_base_is_refused(tmp_path):
    _trained(tiny_llama()).save_pretrained(tmp_path / "a")
    with pytest.raises(ValueError, match=r"hidden size 32 \(checkpoint\) vs 64 \(model\)"):
        ReftModel.from_pretrained(tiny_llama(hidden=64), tmp_path / "a")
    with pytest.raises(ValueError, match=r"4 layers \(checkpoint\) vs 3 \(model\)"):
        ReftModel.from_pretrained(tiny_llama(layers=3), tmp_path / "a")
    with pytest.raises(ValueError, match="architecture 'llama' .* vs 'gpt2'"):
        ReftModel.from_pretrained(tiny_gpt2(layers=4), tmp_path / "a")


def test_missing_truncated_corrupt_files(tmp_path):
    _trained(tiny_llama()).save_pretrained(tmp_path / "a")
    weights = tmp_path / "a" / WEIGHTS_NAME
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        ReftModel.from_pretrained(tiny_llama(), tmp_path / "a")
    weights.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        ReftModel.from_pretrained(tiny_llama(), tmp_path / "a")
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="incomplete"):
        ReftModel.from_pretrained(tiny_llama(), tmp_path / "a")
    (tmp_path / "a" / "reft_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        ReftModel.from_pretrained(tiny_llama(), tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="no reft_config.json"):
        ReftModel.from_pretrained(tiny_llama(), tmp_path / "nothing")


def test_crafted_config_cannot_name_a_class(tmp_path):
    _trained(tiny_llama()).save_pretrained(tmp_path / "a")
    path = tmp_path / "a" / "reft_config.json"
    cfg = json.loads(path.read_text())
    cfg["intervention"] = "subprocess.Popen"
    path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="unknown intervention type 'subprocess.Popen'"):
        ReftModel.from_pretrained(tiny_llama(), tmp_path / "a")


def test_weights_of_another_adapter_are_refused(tmp_path):
    _trained(tiny_llama()).save_pretrained(tmp_path / "a")
    _trained(tiny_llama(), layers="0;3").save_pretrained(tmp_path / "b")
    os.replace(tmp_path / "b" / WEIGHTS_NAME, tmp_path / "a" / WEIGHTS_NAME)
    with pytest.raises(ValueError, match="missing .*layer1_first"):
        ReftModel.from_pretrained(tiny_llama(), tmp_path / "a")


def test_config_json_round_trip():
    cfg = ReftConfig(layers="3;9;18", positions="f7+l7", tied=False, rank=8, intervention="direft", act="relu",
                     dropout=0.05)
    again = ReftConfig.from_json(cfg.to_json())
    assert again == cfg and again.layers == [3, 9, 18]
    with pytest.warns(UserWarning, match="unknown ReftConfig keys"):
        ReftConfig.from_dict(cfg.to_dict() | {"from_the_future": 1})


def test_atomic_directory_keeps_the_old_one_on_failure(tmp_path):
    target = tmp_path / "ckpt"
    atomic_directory(target, lambda d: open(os.path.join(d, "f"), "w").write("old"))

    def crash(d):
        open(os.path.join(d, "f"), "w").write("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_directory(target, crash)
    assert (target / "f").read_text() == "old"
    assert os.listdir(tmp_path) == ["ckpt"]  # no temp directory left behind
    atomic_directory(target, lambda d: open(os.path.join(d, "f"), "w").write("new"))
    assert (target / "f").read_text() == "new" and os.listdir(tmp_path) == ["ckpt"]
