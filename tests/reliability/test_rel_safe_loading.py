"""Loading an adapter never unpickles and never imports anything a file names."""

from __future__ import annotations

import builtins
import importlib
import json
import os
import pickle

import pytest
import torch
from conftest import random_batch, tiny_llama

from reft import ReftConfig, ReftModel, get_reft_model

FIRED: list[str] = []


def _fire(tag):
    FIRED.append(tag)
    return tag


class _Bomb:
    def __reduce__(self):
        return (_fire, ("unpickled",))


def _adapter(tmp_path):
    reft_model = get_reft_model(tiny_llama(), ReftConfig(layers="1;2", positions="f1+l1", rank=2)).eval()
    torch.manual_seed(3)
    for p in reft_model.intervention_parameters():
        torch.nn.init.normal_(p)
    reft_model.save_pretrained(tmp_path / "adapter")
    return reft_model


def test_pickle_files_in_the_adapter_dir_are_never_read(tmp_path, monkeypatch):
    reft_model = _adapter(tmp_path)
    for name in ("pytorch_model.bin", "adapter_model.bin", "optimizer.pt", "reft_model.pkl", "training_args.bin"):
        with open(tmp_path / "adapter" / name, "wb") as f:
            pickle.dump(_Bomb(), f)

    def refuse(*args, **kwargs):
        raise AssertionError("the loader tried to unpickle something")

    for module, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(module, name, refuse)
    ids, mask = random_batch([6, 4], "left")
    loaded = ReftModel.from_pretrained(tiny_llama(), tmp_path / "adapter")
    monkeypatch.undo()
    assert FIRED == []
    assert torch.equal(loaded(ids, attention_mask=mask).logits, reft_model(ids, attention_mask=mask).logits)


@pytest.mark.parametrize("field,value", [
    ("intervention", "builtins.eval"),
    ("intervention", "os.system"),
    ("intervention", "reft.interventions.LoReFT"),  # even a real class path: only registry keys are accepted
    ("act", "os.system"),
    ("dtype", "torch.nn.Module"),
    ("layers_path", "__class__.__init__.__globals__"),
])
def test_a_config_naming_code_is_refused_without_any_import(tmp_path, monkeypatch, field, value):
    _adapter(tmp_path)
    path = tmp_path / "adapter" / "reft_config.json"
    config = json.loads(path.read_text())
    config[field] = value
    path.write_text(json.dumps(config))
    module = value.rpartition(".")[0]
    imported: list[str] = []
    real_import, real_import_module = builtins.__import__, importlib.import_module

    def spy_import(name, *args, **kwargs):
        imported.append(name)
        return real_import(name, *args, **kwargs)

    def spy_import_module(name, *args, **kwargs):
        imported.append(name)
        return real_import_module(name, *args, **kwargs)

    model = tiny_llama()
    monkeypatch.setattr(builtins, "__import__", spy_import)
    monkeypatch.setattr(importlib, "import_module", spy_import_module)
    try:
        __import__("colorsys")  # the spies are live
        with pytest.raises(ValueError, match=field.replace("_", ".")):
            ReftModel.from_pretrained(model, tmp_path / "adapter")
    finally:
        monkeypatch.undo()
    assert "colorsys" in imported
    assert value not in imported and module not in imported, imported
    assert not any(name.startswith(("os", "builtins", "subprocess")) for name in imported), imported


def test_only_the_two_adapter_files_are_opened(tmp_path, monkeypatch):
    _adapter(tmp_path)
    (tmp_path / "adapter" / "notes.txt").write_text("x")
    opened: list[str] = []
    real_open = builtins.open

    def spy_open(file, *args, **kwargs):
        opened.append(os.path.basename(str(file)))
        return real_open(file, *args, **kwargs)

    model = tiny_llama()
    monkeypatch.setattr(builtins, "open", spy_open)
    ReftModel.from_pretrained(model, tmp_path / "adapter")
    monkeypatch.undo()
    assert set(opened) <= {"reft_config.json", "reft_model.safetensors"}, opened
