"""Ctrl-C in training (a real SIGINT to this process): the step finishes, a checkpoint is saved, the run resumes."""

from __future__ import annotations

import os
import signal

import pytest
from _reliability_common import tiny_run

from reft.harness.runs import last_checkpoint
from reft.trainer import ReftTrainer

# no checkpoint falls due on its own (save_steps 100): one is saved only on Ctrl-C
SETTINGS = {"save_steps": 100}


def _train(out, settings=None, **kwargs):
    return tiny_run(out, settings=SETTINGS | (settings or {}), **kwargs)


def _sigint_during_step(monkeypatch, step: int, times: int = 1) -> list[int]:
    """``times`` real SIGINTs to this process while the loss of step ``step`` is computed; the steps begun."""
    original, begun = ReftTrainer.compute_loss, []

    def compute_loss(self, *args, **kwargs):
        begun.append(self.state.global_step + 1)
        if begun[-1] == step:
            for _ in range(times):
                os.kill(os.getpid(), signal.SIGINT)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ReftTrainer, "compute_loss", compute_loss)
    return begun


@pytest.mark.exact  # the resumed curve equals the uninterrupted one up to fp32 rounding (see test_rel_resume)
def test_ctrl_c_finishes_the_step_saves_it_and_the_run_resumes_from_it(tmp_path, monkeypatch, capfd):
    _, full = _train(tmp_path / "full")
    handler = signal.getsignal(signal.SIGINT)
    begun = _sigint_during_step(monkeypatch, 4)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "run")
    assert begun == [1, 2, 3, 4]
    assert signal.getsignal(signal.SIGINT) is handler  # put back
    assert "the step in progress will finish, then training will save a checkpoint and stop" in capfd.readouterr().err
    assert last_checkpoint(tmp_path / "run").endswith("checkpoint-4")  # step 4 finished and saved, step 5 not begun
    assert not (tmp_path / "run" / "adapter").exists()
    monkeypatch.undo()
    _, resumed = _train(tmp_path / "run", resume=True)
    assert resumed["resumed_from"].endswith("checkpoint-4")
    assert [s for s, _ in resumed["loss_curve"]] == list(range(1, 10))
    assert [loss for _, loss in resumed["loss_curve"]] == pytest.approx([loss for _, loss in full["loss_curve"]],
                                                                        rel=1e-5)


def test_a_second_ctrl_c_stops_at_once(tmp_path, monkeypatch):
    handler = signal.getsignal(signal.SIGINT)
    begun = _sigint_during_step(monkeypatch, 4, times=2)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "run")
    assert begun == [1, 2, 3, 4]
    assert signal.getsignal(signal.SIGINT) is handler
    assert not (tmp_path / "run").exists()  # step 4 never finished: nothing saved, nothing left


def test_ctrl_c_in_a_run_without_checkpoints_stops_and_saves_nothing(tmp_path, monkeypatch, capfd):
    begun = _sigint_during_step(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "run", settings={"save_steps": None})
    assert begun == [1, 2]
    assert "the step in progress will finish, then training will stop" in capfd.readouterr().err
    assert not (tmp_path / "run").exists()
