"""Run folders: one folder, one run.

A run folder (``reft train --out X``, :func:`reft.harness.recipe.train_reft`, :func:`reft.harness.suite.run_task`)
holds ``adapter/``, ``checkpoints/``, ``loss_curve.png``, ``train_metrics.json``, ``results.json`` and
``reft_run.json``, the run's fingerprint (:func:`reft.trainer.training_fingerprint`: adapter config, data, the
arguments that shape training; every checkpoint holds a copy). :func:`run_folder` guards a run:

* the folder is checked before anything is loaded: a path that is a file, under a file or not writable, and a folder
  with another run's checkpoints (without ``resume``) or with run outputs reft did not write are refused (an earlier
  reft's run folder, without a fingerprint, is known by its adapter);
* an exclusive lock (``.reft-run.lock``: ``flock`` on a file holding the pid) keeps a second process out; the
  kernel releases it when the process ends, so the lock of a dead process is taken over;
* :func:`claim` compares the run's fingerprint with the folder's (another run's folder is refused, naming the
  differences) and writes it;
* a run that fails leaves nothing it created that holds nothing to resume from: no empty run folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from typing import Any

from transformers.trainer_utils import get_last_checkpoint

from ..save_load import atomic_write_text, is_adapter_dir
from ..trainer import RUN_NAME, fingerprint_differences

LOCK_NAME = ".reft-run.lock"
CHECKPOINTS = "checkpoints"
#: what a run writes into its folder
RUN_OUTPUTS = ("adapter", CHECKPOINTS, "loss_curve.png", "train_metrics.json", "results.json", RUN_NAME)

_held: dict[str, list[int]] = {}  # folder → [lock fd, depth]: the lock is re-entrant within a process


class RunFolderError(RuntimeError):
    """A run folder that this run may not use (another run's, locked, a file, not writable)."""


def last_checkpoint(folder: str | os.PathLike) -> str | None:
    """The newest ``checkpoints/checkpoint-N`` of a run folder (transformers' ``get_last_checkpoint``), or None."""
    directory = os.path.join(folder, CHECKPOINTS)
    return get_last_checkpoint(directory) if os.path.isdir(directory) else None


def check_writable_path(path: str | os.PathLike, *, folder: bool) -> None:
    """Refuse (``RunFolderError``) an output path that cannot be written: a file where a folder is wanted (or the
    reverse), a parent that is a file, or a folder without write permission. Creates nothing."""
    path = os.path.abspath(os.fspath(path))
    if os.path.lexists(path):
        if folder and not os.path.isdir(path):
            raise RunFolderError(f"{path} is a file: give a folder (new, or one this run may use)")
        if not folder and os.path.isdir(path):
            raise RunFolderError(f"{path} is a folder: give a file path")
        target = path if folder else os.path.dirname(path)
    else:
        target = os.path.dirname(path)
        while not os.path.lexists(target):
            target = os.path.dirname(target)
        if not os.path.isdir(target):
            raise RunFolderError(f"cannot create {path}: {target} is a file")
    if not os.access(target, os.W_OK | os.X_OK):
        raise RunFolderError(f"cannot write {path}: {target} is not writable")


def check_run_folder(folder: str | os.PathLike, *, resume: bool = False) -> None:
    """Refuse a folder this run may not use, before anything is loaded (see the module docstring)."""
    folder = os.path.abspath(os.fspath(folder))
    check_writable_path(folder, folder=True)
    if not os.path.isdir(folder):
        return
    last = last_checkpoint(folder)
    if last and not resume:
        raise RunFolderError(f"{folder} holds checkpoints of an earlier run (newest: {os.path.basename(last)}): "
                             "continue it with --resume (resume=True), or train into a new folder")
    adapter = os.path.join(folder, "adapter")
    is_adapter = is_adapter_dir(adapter) or os.path.isfile(os.path.join(adapter, "adapter_config.json"))
    if os.path.isdir(adapter) and os.listdir(adapter) and not is_adapter:
        raise RunFolderError(f"{adapter} holds files that are not an adapter: reft will not replace them; train into "
                             "a new folder")
    outputs = [n for n in RUN_OUTPUTS if os.path.lexists(os.path.join(folder, n))]
    if outputs and not (os.path.isfile(os.path.join(folder, RUN_NAME)) or last or is_adapter):
        raise RunFolderError(f"{folder} holds {', '.join(outputs)} without {RUN_NAME} or an adapter: files reft did "
                             "not write; train into a new folder")


def claim(folder: str | os.PathLike, fingerprint: dict[str, Any]) -> None:
    """Record ``fingerprint`` as the folder's run (``reft_run.json``, atomically), refusing another run's folder."""
    path = os.path.join(folder, RUN_NAME)
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                saved = json.load(f)
        except (OSError, ValueError) as e:
            raise RunFolderError(f"{path} is unreadable ({e}): train into a new folder") from None
        diffs = [d.replace("(checkpoint)", "(earlier run)") for d in fingerprint_differences(saved, fingerprint)]
        if diffs:
            raise RunFolderError(f"{folder} belongs to another run: {'; '.join(diffs)}. Train into a new folder, or "
                                 "rerun with that run's data and settings")
    atomic_write_text(path, json.dumps(fingerprint, indent=2) + "\n")


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike) -> Iterator[None]:
    """Hold the exclusive lock of an existing run folder (re-entrant in this process).

    Raises:
        RunFolderError: another live process holds it (its pid is named).
    """
    folder = os.path.abspath(os.fspath(folder))
    if folder in _held:
        _held[folder][1] += 1
        try:
            yield
        finally:
            _held[folder][1] -= 1
        return
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    path = os.path.join(folder, LOCK_NAME)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RunFolderError(f"{folder} is in use by another reft run (pid {pid}): wait for it to end, or train "
                                 "into another folder") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino  # not a file its last holder unlinked meanwhile
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _held[folder] = [fd, 1]
    try:
        yield
    finally:
        del _held[folder]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


@contextlib.contextmanager
def run_folder(folder: str | os.PathLike, *, resume: bool = False) -> Iterator[str]:
    """Check, create and lock a run folder for one run; yields its absolute path.

    On an exception (Ctrl-C included) what this run created and that holds nothing to resume from is removed: its
    ``reft_run.json``, an empty ``checkpoints/``, and the folder itself when this run created it and it is empty.
    """
    folder = os.path.abspath(os.fspath(folder))
    if folder in _held:  # a nested call of the same run (run_task → train_reft)
        with run_lock(folder):
            yield folder
        return
    check_run_folder(folder, resume=resume)
    created = not os.path.isdir(folder)
    os.makedirs(folder, exist_ok=True)
    try:
        with run_lock(folder):
            had_fingerprint = os.path.isfile(os.path.join(folder, RUN_NAME))
            try:
                check_run_folder(folder, resume=resume)  # again, now that no other run can write here
                yield folder
            except BaseException:
                _remove_what_holds_nothing(folder, had_fingerprint)
                raise
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(folder)  # only when empty (a process that took the folder meanwhile keeps it)
        raise


def _remove_what_holds_nothing(folder: str, had_fingerprint: bool) -> None:
    if last_checkpoint(folder):
        return  # something to resume from
    checkpoints = os.path.join(folder, CHECKPOINTS)
    if os.path.isdir(checkpoints) and not any(not n.startswith(".") for n in os.listdir(checkpoints)):
        shutil.rmtree(checkpoints, ignore_errors=True)  # empty, or only staging leftovers of this run
    if not had_fingerprint:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(folder, RUN_NAME))
