"""Exact resume, atomic checkpoints, weights_only loading of Trainer state, R orthonormal across save/load."""

from __future__ import annotations

import os
import pickle
import shutil

import pytest
import torch
from _reliability_common import LossLog, intervention_state, make_trainer, one_thread, token_examples  # noqa: F401
from conftest import tiny_llama

import reft.trainer as reft_trainer
from reft import ReftConfig, ReftModel
from reft.interventions import orthonormalize
from reft.save_load import WEIGHTS_NAME

pytestmark = pytest.mark.exact

STEPS = 6  # 12 examples, batch 4, 2 epochs; checkpoints every 2 steps


def _checkpoints(run_dir) -> list[str]:
    return sorted(d for d in os.listdir(run_dir) if d.startswith("checkpoint-"))


def _assert_orthonormal(reft_model) -> None:
    for key, module in reft_model.interventions.items():
        r = module.rotate()
        assert r.dtype == torch.float32
        torch.testing.assert_close(r.T @ r, torch.eye(r.shape[1]), atol=1e-5, rtol=0, msg=key)


# With the frozen-block cache on, the uninterrupted run replays in epoch 2 the frozen blocks' output stored in epoch 1
# (batches of other shapes), while a resumed run starts with an empty cache and recomputes it in epoch 2's shapes. The
# two agree up to fp32 rounding only: a GEMM's result may depend on its shape through the CPU's kernels and blocking
# (measured: 1e-7 relative on the loss after one step, AVX2 vs AVX-512). These bounds allow for that rounding carried
# through the remaining Adam steps; with the cache off both runs compute every batch in the same shapes: bitwise.
LOSS_RTOL, WEIGHT_ATOL = 1e-5, 1e-5


@pytest.fixture(scope="module", params=[False, True], ids=["cache-off", "cache-on"])
def uninterrupted(request, tmp_path_factory):
    """The reference run: 6 steps with dropout 0.3 and shuffling, never stopped."""
    out = tmp_path_factory.mktemp("full")
    log = LossLog()
    trainer = make_trainer(out, callbacks=[log], frozen_cache=request.param)
    trainer.train()
    assert [s for s, _ in log.points] == list(range(1, STEPS + 1))
    return request.param, log.points, intervention_state(trainer)


def _assert_same_run(cache: bool, curve, reference, state=None, reference_state=None) -> None:
    """Bitwise with the cache off; equal up to fp32 rounding (LOSS_RTOL, WEIGHT_ATOL) with it on."""
    assert [s for s, _ in curve] == [s for s, _ in reference]
    if not cache:
        assert curve == reference
    else:
        assert [loss for _, loss in curve] == pytest.approx([loss for _, loss in reference], rel=LOSS_RTOL, abs=0)
    for key, value in (state or {}).items():
        if not cache:
            assert torch.equal(value, reference_state[key]), key
        else:
            torch.testing.assert_close(value, reference_state[key], atol=WEIGHT_ATOL, rtol=0, msg=key)


def test_stopped_and_resumed_run_reproduces_the_loss_curve(tmp_path, uninterrupted):
    cache, full_curve, full_state = uninterrupted
    first = LossLog(stop_at=4)  # stops in the middle of epoch 2
    make_trainer(tmp_path, callbacks=[first], frozen_cache=cache).train()
    assert _checkpoints(tmp_path) == ["checkpoint-2", "checkpoint-4"]
    second = LossLog()
    resumed = make_trainer(tmp_path, callbacks=[second], frozen_cache=cache)  # a fresh model: all from the checkpoint
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-4"))
    _assert_same_run(cache, first.points + second.points, full_curve, intervention_state(resumed), full_state)
    _assert_orthonormal(resumed.model)


def test_householder_rotation_resumes_bitwise(tmp_path):
    """rotation="householder" keeps a d×d buffer B beside X: checkpoints carry both, so a resumed run is the
    uninterrupted one (cache off: same shapes, bitwise)."""
    config = ReftConfig(layers="1;2", positions="f2+l2", tied=False, rank=4, dropout=0.3, rotation="householder")
    full = LossLog()
    reference = make_trainer(tmp_path / "full", config=config, callbacks=[full], frozen_cache=False)
    reference.train()
    first = LossLog(stop_at=4)
    make_trainer(tmp_path / "cut", config=config, callbacks=[first], frozen_cache=False).train()
    second = LossLog()
    resumed = make_trainer(tmp_path / "cut", config=config, callbacks=[second], frozen_cache=False)
    resumed.train(resume_from_checkpoint=str(tmp_path / "cut" / "checkpoint-4"))
    _assert_same_run(False, first.points + second.points, full.points, intervention_state(resumed),
                     intervention_state(reference))
    assert any(k.endswith("weight.0.base") for k in intervention_state(resumed))
    _assert_orthonormal(resumed.model)


def test_resume_depends_on_the_saved_rng_state(tmp_path, uninterrupted):
    """Control: without the RNG file the dropout masks differ, so the match above is not a coincidence."""
    cache, full_curve, _ = uninterrupted
    make_trainer(tmp_path, callbacks=[LossLog(stop_at=4)], frozen_cache=cache).train()
    os.remove(tmp_path / "checkpoint-4" / "rng_state.pth")
    log = LossLog()
    make_trainer(tmp_path, callbacks=[log], frozen_cache=cache).train(
        resume_from_checkpoint=str(tmp_path / "checkpoint-4"))
    losses, reference = [loss for _, loss in log.points], [loss for _, loss in full_curve[4:]]
    assert losses != pytest.approx(reference, rel=100 * LOSS_RTOL, abs=0)


def test_a_save_that_fails_midway_leaves_the_last_good_checkpoint(tmp_path, uninterrupted):
    cache, full_curve, _ = uninterrupted
    trainer = make_trainer(tmp_path, callbacks=[LossLog()], frozen_cache=cache)
    original = trainer._save_rng_state

    def crash_at_step_4(output_dir):
        if trainer.state.global_step == 4:
            assert os.path.isfile(os.path.join(output_dir, WEIGHTS_NAME))  # half of checkpoint-4 was written
            raise KeyboardInterrupt("killed during save")
        original(output_dir)

    trainer._save_rng_state = crash_at_step_4
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert os.listdir(tmp_path) == ["checkpoint-2"]  # no checkpoint-4, no staging folder left behind
    assert sorted(os.listdir(tmp_path / "checkpoint-2")) == sorted(
        ["reft_config.json", WEIGHTS_NAME, "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json",
         "reft_run.json"])
    ReftModel.from_pretrained(tiny_llama(init=0.2), tmp_path / "checkpoint-2")  # loadable
    log = LossLog()
    make_trainer(tmp_path, callbacks=[log], frozen_cache=cache).train(
        resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    _assert_same_run(cache, log.points, full_curve[2:])


def test_a_killed_save_leaves_no_checkpoint_folder(tmp_path, monkeypatch):
    """A kill (no cleanup) leaves only a hidden staging folder, which neither resume nor rotation picks up."""
    from transformers.trainer_utils import get_last_checkpoint

    trainer = make_trainer(tmp_path, max_steps=4)
    original = trainer._save_rng_state

    def die(output_dir):
        if trainer.state.global_step == 4:
            raise SystemExit(1)
        original(output_dir)

    trainer._save_rng_state = die
    real_rmtree = shutil.rmtree

    def rmtree(path, ignore_errors=False):  # a killed process never cleans up its half-written folder
        if not str(path).endswith(".staging-checkpoint-4"):
            real_rmtree(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(reft_trainer.shutil, "rmtree", rmtree)
    with pytest.raises(SystemExit):
        trainer.train()
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == [".staging-checkpoint-4", "checkpoint-2"]
    assert get_last_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-2")
    # the next save at step 4 clears the leftover and publishes a complete folder
    trainer = make_trainer(tmp_path, max_steps=4)
    trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-2", "checkpoint-4"]
    assert os.path.isfile(tmp_path / "checkpoint-4" / "rng_state.pth")


def test_resume_reads_trainer_state_with_weights_only(tmp_path, monkeypatch):
    make_trainer(tmp_path, max_steps=2).train()
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append((os.path.basename(str(args[0] if args else kwargs.get("f"))), kwargs.get("weights_only")))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    make_trainer(tmp_path, max_steps=3).train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    names = {name for name, _ in calls}
    assert {"optimizer.pt", "scheduler.pt", "rng_state.pth"} <= names, calls
    assert all(weights_only is True for _, weights_only in calls), calls


class _Payload:
    """Unpickling this would call _mark: weights_only must refuse it."""

    def __reduce__(self):
        return (_mark, ("unpickled",))


MARKS: list[str] = []


def _mark(value):
    MARKS.append(value)
    return {}


def test_a_pickle_payload_in_the_optimizer_file_is_refused(tmp_path):
    make_trainer(tmp_path, max_steps=2).train()
    with open(tmp_path / "checkpoint-2" / "optimizer.pt", "wb") as f:
        pickle.dump({"state": _Payload()}, f, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        make_trainer(tmp_path, max_steps=3).train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert MARKS == []


def test_r_stays_orthonormal_across_save_load_and_training(tmp_path):
    decay = dict(weight_decay=0.5, warmup_steps=0, lr_scheduler_type="constant")  # shrinks A by 1% a step, never R
    trainer = make_trainer(tmp_path, max_steps=2, **decay)
    trainer.train()
    saved = trainer.model.interventions["layer1_first"].rotate.weight.detach().clone()
    drift = (saved.T @ saved - torch.eye(saved.shape[1])).abs().max()
    assert drift > 1e-2  # the stored A is no longer orthonormal …
    loaded = ReftModel.from_pretrained(tiny_llama(init=0.2), tmp_path / "checkpoint-2", is_trainable=True)
    _assert_orthonormal(loaded)  # … yet R = orthonormalize(A) is orthonormal after loading
    torch.testing.assert_close(loaded.interventions["layer1_first"].rotate(), orthonormalize(saved))
    resumed = make_trainer(tmp_path, max_steps=4, **decay)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    _assert_orthonormal(resumed.model)


def test_save_model_into_output_dir_keeps_the_checkpoints(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=2)
    trainer.train()
    trainer.save_model()  # the usual HF call: adapter files next to the checkpoint folders
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-2", "reft_config.json", WEIGHTS_NAME]
    ReftModel.from_pretrained(tiny_llama(init=0.2), tmp_path)
    trainer.model.save_pretrained(tmp_path)  # a folder with adapter sub-folders is an adapter folder: updated in place
    assert sorted(os.listdir(tmp_path)) == ["README.md", "checkpoint-2", "reft_config.json", WEIGHTS_NAME]
    assert (tmp_path / "checkpoint-2" / "optimizer.pt").is_file()


@pytest.mark.parametrize("greater_is_better,best_step", [(False, 6), (True, 2)])  # the loss falls: 6 lowest, 2 highest
def test_rotation_and_best_checkpoint_work_with_atomic_saves(tmp_path, greater_is_better, best_step):
    data = token_examples()
    trainer = make_trainer(tmp_path, data=data, eval_data=data[:4], eval_strategy="steps", eval_steps=2,
                           save_total_limit=1, load_best_model_at_end=True, metric_for_best_model="loss",
                           greater_is_better=greater_is_better)
    trainer.train()
    best = trainer.state.best_model_checkpoint
    assert best == str(tmp_path / f"checkpoint-{best_step}") and os.path.isdir(best)
    kept = _checkpoints(tmp_path)
    assert os.path.basename(best) in kept and len(kept) <= 2
    assert not any(d.startswith(".") for d in os.listdir(tmp_path))  # no staging or swap folder left
    # the best checkpoint's weights are what the trainer ended with (load_best_model_at_end)
    loaded = ReftModel.from_pretrained(tiny_llama(init=0.2), best)
    for key, value in loaded.interventions.state_dict().items():
        assert torch.equal(value, trainer.model.interventions.state_dict()[key]), key
