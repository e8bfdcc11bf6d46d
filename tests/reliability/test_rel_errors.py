"""Bad input fails early with an error that names the problem and the fix."""

from __future__ import annotations

import math
import os

import pytest
import torch
from _reliability_common import CharTokenizer, LossLog, make_trainer, one_thread, token_examples  # noqa: F401
from conftest import tiny_llama
from transformers import TrainerCallback

from reft import ReftConfig, ReftModel, get_reft_model
from reft.data import ReftDataCollator, make_supervised_dataset, tokenize_example
from reft.positions import check_positions_fit
from reft.trainer import NonFiniteLossError


@pytest.mark.parametrize("bad", ["f7x", "l-1", "last3", "f7+l7+f1"])
def test_unparsable_positions_name_the_syntax(bad):
    with pytest.raises(ValueError, match=r"cannot parse positions .*write 'f<p>\+l<s>'"):
        ReftConfig(positions=bad)


def test_positions_that_no_prompt_can_hold_are_refused_before_tokenising():
    with pytest.raises(ValueError, match=r"ask for 14 prompt tokens .*max_length=10 .*at most 9.*f4\+l5"):
        make_supervised_dataset(CharTokenizer(), ["abc"], ["d"], positions="f7+l7", max_length=10)
    with pytest.raises(ValueError, match=r"largest that fits: l4"):
        check_positions_fit("l8", 5)
    assert check_positions_fit("f7+l7", 15).width == 14  # exactly fits: 14 prompt + 1 response token
    # shorter prompts under a roomy max_length are fine: the ⌊n/2⌋ rule shrinks them per example
    data = make_supervised_dataset(CharTokenizer(), ["ab", "a much longer prompt"], ["x", "y"],
                                   positions="f7+l7", max_length=64)
    assert [d["prompt_lengths"] for d in data] == [3, 21]


def test_positions_longer_than_every_training_prompt_warn(tmp_path):
    data = token_examples(4, prompt=3)  # prompts of 3…6 tokens
    with pytest.warns(UserWarning, match=r"ask for 14 prompt tokens but the longest training prompt \(6 tokens\) "
                                         r"gets 6.*f3\+l3"):
        make_trainer(tmp_path, config=ReftConfig(layers=[1], positions="f7+l7"), data=data)


def test_empty_prompt():
    with pytest.raises(ValueError, match="empty prompt"):
        tokenize_example(CharTokenizer(), "", "answer", add_bos=False)


@pytest.mark.parametrize("rank", [0, -3])
def test_rank_not_positive(rank):
    with pytest.raises(ValueError, match=f"rank must be a positive integer, got {rank}"):
        ReftConfig(rank=rank)


def test_rank_above_hidden_size_when_loading_a_config():
    with pytest.raises(ValueError, match=r"rank 64 > hidden size 32: choose rank ≤ 32"):
        ReftConfig(rank=64, hidden_size=32)


def test_unknown_intervention_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown intervention type 'lorft': known types are \[.*'loreft'.*register"):
        ReftConfig(intervention="lorft")


def test_layers_path_cannot_walk_into_dunders():
    with pytest.raises(ValueError, match="layers_path .* public attribute names"):
        ReftConfig(layers_path="__class__.__init__.__globals__")
    assert ReftConfig(layers_path="model.layers").layers_path == "model.layers"


def test_all_masked_labels_are_refused_everywhere(tmp_path):
    data = token_examples(4)
    data[2] = {**data[2], "labels": [-100] * len(data[2]["labels"])}
    with pytest.raises(ValueError, match="training example 2 has every label masked"):
        make_trainer(tmp_path, data=data)
    with pytest.raises(ValueError, match="every label in this batch is masked"):
        ReftDataCollator(0)([data[2]])
    trainer = make_trainer(tmp_path)
    batch = ReftDataCollator(0)(token_examples(2))
    batch["labels"][:] = -100  # e.g. a custom collator that masked everything
    with pytest.raises(ValueError, match="every label in this batch is masked"):
        trainer.compute_loss(trainer.model, batch)


class _PoisonAfter(TrainerCallback):
    """Turns an intervention bias into NaN after ``step`` optimizer steps (a diverged run)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            with torch.no_grad():
                model.interventions["layer1_first"].source.bias.fill_(math.nan)


def test_nan_loss_stops_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path, callbacks=[LossLog(), _PoisonAfter(3)], save_steps=2)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(nan\) at step 4: .*checkpoint-2"):
        trainer.train()
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-2"]
    loaded = ReftModel.from_pretrained(tiny_llama(init=0.2), tmp_path / "checkpoint-2")
    assert all(torch.isfinite(p).all() for p in loaded.interventions.parameters())


def test_nan_before_any_checkpoint_says_so(tmp_path):
    trainer = make_trainer(tmp_path, callbacks=[_PoisonAfter(1)], save_steps=10)
    with pytest.raises(NonFiniteLossError, match="at step 2: .*no checkpoint was saved before it"):
        trainer.train()


def test_checkpoint_weights_of_another_hidden_size_are_refused(tmp_path):
    make_trainer(tmp_path, max_steps=2).train()
    other = get_reft_model(tiny_llama(hidden=64), ReftConfig(layers="1;2", positions="f2+l2", tied=False, rank=4))
    with pytest.raises(ValueError, match=r"layer1_first.rotate.weight has shape \(32, 4\), the model needs \(64, 4\)"):
        from reft.save_load import load_reft_state_dict, read_adapter

        load_reft_state_dict(other, read_adapter(tmp_path / "checkpoint-2")[1])


def test_resume_from_a_truncated_checkpoint_fails_before_training(tmp_path):
    make_trainer(tmp_path, max_steps=2).train()
    weights = tmp_path / "checkpoint-2" / "reft_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    log, checkpoint = LossLog(), str(tmp_path / "checkpoint-2")
    with pytest.raises(ValueError, match="reft_model.safetensors is truncated or corrupt.*re-save"):
        make_trainer(tmp_path, max_steps=4, callbacks=[log]).train(resume_from_checkpoint=checkpoint)
    assert log.points == []  # no step ran
    (tmp_path / "checkpoint-2" / "reft_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="holds no reft_model.safetensors: not a reft checkpoint"):
        make_trainer(tmp_path, max_steps=4).train(resume_from_checkpoint=checkpoint)
