"""Saving never deletes or replaces what reft did not write."""

from __future__ import annotations

import os

import pytest
import torch
from _reliability_common import one_thread, tree_state  # noqa: F401
from conftest import tiny_llama

from reft import ReftConfig, ReftModel, get_reft_model
from reft.save_load import ADAPTER_FILES, WEIGHTS_NAME, atomic_directory, is_adapter_dir


def _reft(seed: int = 0):
    reft_model = get_reft_model(tiny_llama(), ReftConfig(layers="1;2", positions="f1+l1"))
    torch.manual_seed(seed)
    for p in reft_model.intervention_parameters():
        torch.nn.init.normal_(p, std=0.3)
    return reft_model


def _user_folder(path):
    """A folder holding only a user's dotfiles (what `save_pretrained("~")` would meet)."""
    (path / ".ssh").mkdir(parents=True)
    (path / ".ssh" / "id_ed25519").write_text("secret")
    (path / ".bashrc").write_text("export PS1=x")
    return path


def test_save_refuses_a_folder_that_is_not_an_adapter(tmp_path):
    home = _user_folder(tmp_path / "home")
    before = tree_state(tmp_path)
    with pytest.raises(FileExistsError, match=r"home is not a reft adapter folder \(it holds \.bashrc, \.ssh\): "
                                              r"nothing was written; .*overwrite=True"):
        _reft().save_pretrained(home)
    assert tree_state(tmp_path) == before  # nothing deleted, nothing added, no temp folder left
    # overwrite=True adds the adapter files beside them and touches nothing else
    from reft.save_load import save_adapter

    save_adapter(_reft(), home, overwrite=True)
    after = tree_state(tmp_path)
    assert {k: v for k, v in after.items() if os.path.basename(k) not in ADAPTER_FILES} == before
    assert sorted(os.listdir(home)) == sorted([".bashrc", ".ssh", *ADAPTER_FILES])
    ReftModel.from_pretrained(tiny_llama(), home)


def test_save_refuses_a_path_that_is_a_file(tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    for save in (lambda: _reft().save_pretrained(target),
                 lambda: atomic_directory(target, lambda tmp: None)):
        with pytest.raises(FileExistsError, match="notes.txt is a file, not a folder: nothing was written"):
            save()
        assert target.read_text() == "mine" and os.listdir(tmp_path) == ["notes.txt"]


def test_save_updates_an_adapter_folder_and_keeps_everything_else(tmp_path):
    first, second = _reft(1), _reft(2)
    adapter = tmp_path / "adapter"
    first.save_pretrained(adapter)
    (adapter / "README.md").write_text("my notes")
    second.save_pretrained(adapter)  # a reft adapter with a README: the two adapter files are replaced, in place
    assert (adapter / "README.md").read_text() == "my notes"
    loaded = ReftModel.from_pretrained(tiny_llama(), adapter)
    for key, value in loaded.interventions.state_dict().items():
        assert torch.equal(value, second.interventions.state_dict()[key]), key
    # named adapters in sub-folders (a peft-style layout; Trainer checkpoints) also make a folder a reft adapter
    root = tmp_path / "multi"
    first.save_pretrained(root / "other")
    (root / "notes.txt").write_text("keep")
    assert is_adapter_dir(root) and not is_adapter_dir(tmp_path / "nothing")
    second.save_pretrained(root)
    assert (root / "notes.txt").read_text() == "keep" and (root / "other" / WEIGHTS_NAME).is_file()
    assert (root / WEIGHTS_NAME).is_file()


def test_atomic_directory_never_replaces_a_folder_with_files_it_did_not_write(tmp_path):
    """The shared helper (LoRA adapters, pyreft imports): only a folder of names it writes, or `owned`, is replaced."""
    target = tmp_path / "lora"
    target.mkdir()
    (target / "mine.txt").write_text("keep")

    def write(tmp):
        with open(os.path.join(tmp, "adapter_config.json"), "w") as f:
            f.write("{}")

    with pytest.raises(FileExistsError, match=r"lora holds mine\.txt, which this save did not write: nothing was "
                                              "changed"):
        atomic_directory(target, write, owned=("adapter_config.json", "README.md"))
    assert os.listdir(target) == ["mine.txt"] and os.listdir(tmp_path) == ["lora"]
    (target / "mine.txt").unlink()
    (target / "README.md").write_text("old peft readme")  # an owned name: the folder is replaced as a whole
    atomic_directory(target, write, owned=("adapter_config.json", "README.md"))
    assert os.listdir(target) == ["adapter_config.json"]
