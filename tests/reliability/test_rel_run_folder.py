"""A run folder belongs to one run: fingerprinted checkpoints, a lock, whole-run metrics, no empty folder left."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from _reliability_common import (  # noqa: F401
    RUN_PROMPTS,
    LossLog,
    make_trainer,
    one_thread,
    tiny_run,
    token_examples,
    tree_state,
)

from reft.harness.runs import LOCK_NAME, RunFolderError
from reft.trainer import RUN_NAME, ReftTrainer


def test_resume_from_another_runs_checkpoint_names_the_differences(tmp_path):
    """ReftTrainer: a checkpoint of other data and another learning rate is refused before any step, by name."""
    make_trainer(tmp_path, max_steps=2).train()
    checkpoint = str(tmp_path / "checkpoint-2")
    saved = json.loads((tmp_path / "checkpoint-2" / RUN_NAME).read_text())
    assert saved["training"]["learning_rate"] == 2e-2 and saved["data"]["examples"] == 12
    before = tree_state(tmp_path)
    log = LossLog()
    other = make_trainer(tmp_path, max_steps=4, learning_rate=1e-3, data=token_examples(12, seed=9), callbacks=[log])
    with pytest.raises(ValueError, match=r"checkpoint-2 belongs to another run: data\.sha256: '[0-9a-f]{12}…' "
                                         r"\(checkpoint\) vs '[0-9a-f]{12}…' \(this run\); training\.learning_rate: "
                                         r"0\.02 \(checkpoint\) vs 0\.001 \(this run\)\. Resume with that run's data"):
        other.train(resume_from_checkpoint=checkpoint)
    assert log.points == [] and tree_state(tmp_path) == before
    # the same run continued for longer (max_steps 2 → 4) is a resume
    make_trainer(tmp_path, max_steps=4, callbacks=[log]).train(resume_from_checkpoint=checkpoint)
    assert [s for s, _ in log.points] == [3, 4]
    # a checkpoint of an older reft (no fingerprint) warns that it cannot be checked
    os.remove(tmp_path / "checkpoint-4" / RUN_NAME)
    with pytest.warns(UserWarning, match="has no reft_run.json .*cannot check that it belongs to this run"):
        make_trainer(tmp_path, max_steps=5).train(resume_from_checkpoint=str(tmp_path / "checkpoint-4"))


def test_train_reft_resume_of_another_run_and_fresh_run_in_a_used_folder_are_refused(tmp_path):
    """The issue's case: a used --out resumed with other data and learning rate; and a fresh run there."""
    out = tmp_path / "run"
    tiny_run(out)
    before = tree_state(tmp_path)
    with pytest.raises(RunFolderError, match=r"run belongs to another run: data\.sha256: .*training\.learning_rate: "
                                             r"0\.02 \(earlier run\) vs 0\.001 \(this run\)"):
        tiny_run(out, settings={"lr": 1e-3}, prompts=[p + "!" for p in RUN_PROMPTS], resume=True)
    with pytest.raises(RunFolderError, match=r"holds checkpoints of an earlier run \(newest: checkpoint-9\): "
                                             "continue it with --resume"):
        tiny_run(out)  # a fresh run would write checkpoint-2 … beside the earlier run's checkpoint-9
    assert tree_state(tmp_path) == before  # the earlier run's adapter, checkpoints and metrics are untouched


def test_a_second_run_on_the_same_folder_is_locked_out(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    code = ("import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX);"
            " os.write(fd, str(os.getpid()).encode()); print('held', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code, str(out / LOCK_NAME)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderError, match=rf"run is in use by another reft run \(pid {holder.pid}\)"):
            tiny_run(out)
        assert os.listdir(out) == [LOCK_NAME]  # the refused run removed nothing of the running one's
    finally:
        holder.stdin.close()
        holder.wait()
    # the holder died without removing its lock file: the stale lock is taken over, then released
    assert os.listdir(out) == [LOCK_NAME]
    tiny_run(out, settings={"epochs": 1})
    assert LOCK_NAME not in os.listdir(out) and (out / "adapter").is_dir()


@pytest.mark.exact  # equal to the uninterrupted run up to fp32 rounding (frozen-block cache on, see test_rel_resume)
def test_after_a_resume_metrics_and_curve_cover_the_whole_run(tmp_path, monkeypatch):
    _, full = tiny_run(tmp_path / "full")
    assert [s for s, _ in full["loss_curve"]] == list(range(1, 10))
    original = ReftTrainer.compute_loss

    def stop_after_step_4(self, *args, **kwargs):
        if self.state.global_step == 4:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ReftTrainer, "compute_loss", stop_after_step_4)
    with pytest.raises(KeyboardInterrupt):
        tiny_run(tmp_path / "run")
    monkeypatch.undo()
    _, resumed = tiny_run(tmp_path / "run", resume=True)
    assert resumed["resumed_from"].endswith("checkpoint-4")
    assert [s for s, _ in resumed["loss_curve"]] == list(range(1, 10))  # the first 4 steps come from the checkpoint
    assert [loss for _, loss in resumed["loss_curve"]] == pytest.approx([loss for _, loss in full["loss_curve"]],
                                                                        rel=1e-5)
    on_disk = json.loads((tmp_path / "run" / "train_metrics.json").read_text())
    assert on_disk["loss_curve"] == [list(p) for p in resumed["loss_curve"]]
    assert (tmp_path / "run" / "loss_curve.png").stat().st_size > 0


def test_a_failed_run_leaves_no_empty_run_folder(tmp_path, monkeypatch):
    def fail(self, *args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(ReftTrainer, "compute_loss", fail)
    with pytest.raises(RuntimeError, match="boom"):
        tiny_run(tmp_path / "new")
    assert os.listdir(tmp_path) == []  # the folder it created is gone
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(RuntimeError, match="boom"):
        tiny_run(tmp_path / "mine")
    assert os.listdir(tmp_path / "mine") == ["notes.txt"]  # a folder it did not create stays, without its files
