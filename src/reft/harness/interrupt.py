"""Ctrl-C during training as a request: finish the step, save a checkpoint, stop (no finished step is lost).

A ``KeyboardInterrupt`` raised by Python's default SIGINT handler lands at whatever bytecode runs: inside a lock, a
``finally``, a ``__del__`` (where Python prints it and carries on), the middle of a checkpoint write. Inside
:func:`stop_on_interrupt` the first SIGINT only sets a flag; at the end of the step in progress the Trainer saves a
checkpoint (when the run saves any: ``save_strategy != "no"``) and stops, and ``KeyboardInterrupt`` is raised where
``trainer.train()`` returned. A second SIGINT raises it at once, as before.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

from transformers import Trainer, TrainerCallback


class _StopAtStepEnd(TrainerCallback):
    def __init__(self, saves: bool) -> None:
        self.saves, self.requested = saves, False

    def on_step_end(self, args, state, control, **kwargs):
        if self.requested:
            control.should_save = self.saves
            control.should_training_stop = True


@contextlib.contextmanager
def stop_on_interrupt(trainer: Trainer) -> Iterator[None]:
    """Around ``trainer.train()``: the first Ctrl-C stops at the end of the step (see the module), the second at once.

    Outside the main thread (where no signal handler can be set) it changes nothing. The previous SIGINT handler is
    back on exit. Raises KeyboardInterrupt after the block when a Ctrl-C stopped training before its last step.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stop = _StopAtStepEnd(saves=trainer.args.save_strategy != "no")

    def on_sigint(signum, frame):
        if stop.requested:
            raise KeyboardInterrupt
        stop.requested = True
        then = "save a checkpoint and stop" if stop.saves else "stop"
        # os.write, not print: a handler may run in the middle of another write to sys.stderr
        os.write(2, f"\nCtrl-C: the step in progress will finish, then training will {then} "
                    "(Ctrl-C again to stop at once)\n".encode())

    previous = signal.signal(signal.SIGINT, on_sigint)
    trainer.add_callback(stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        trainer.remove_callback(stop)
    if stop.requested and trainer.state.global_step < trainer.state.max_steps:
        raise KeyboardInterrupt
