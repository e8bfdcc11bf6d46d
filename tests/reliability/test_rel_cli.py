"""Every CLI user error: exit 2 with one line naming the flag, file, line or value and the fix, never a traceback,
nothing written outside --out (and, for errors that can be known up front, the model never loaded)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from _reliability_common import one_thread, save_tiny_causal_lm, save_tiny_encoder_config, tree_state  # noqa: F401
from safetensors.torch import load_file, save_file

import reft.harness.models as harness_models
from reft import ReftConfig, get_reft_model
from reft.cli.main import main as cli_main
from reft.harness.runs import LOCK_NAME, last_checkpoint
from reft.save_load import WEIGHTS_NAME

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ["--layers", "1;2", "--positions", "f1+l1", "--epochs", "1", "--batch-size", "2", "--max-length", "64"]
GOOD = b'{"prompt": "hello there", "response": "hi"}\n{"prompt": "good bye", "response": "bye now"}\n'
LINE1 = GOOD.split(b"\n")[0] + b"\n"
PROGRESS = re.compile(r"\d+%\||it/s\]|s/it\]")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """One tiny causal LM folder (context 128 tokens), an encoder config, and an adapter whose weights are NaN."""
    root = tmp_path_factory.mktemp("assets")
    model = save_tiny_causal_lm(root / "tiny")
    encoder = save_tiny_encoder_config(root / "bert")
    from transformers import AutoModelForCausalLM

    reft_model = get_reft_model(AutoModelForCausalLM.from_pretrained(model), ReftConfig(layers="1", positions="l1"))
    reft_model.save_pretrained(root / "nan_adapter")
    weights = root / "nan_adapter" / WEIGHTS_NAME
    save_file({k: torch.full_like(v, float("nan")) for k, v in load_file(weights).items()}, weights,
              metadata={"format": "pt"})  # written around reft's refusal: a diverged run of an older reft
    return {"model": model, "encoder": encoder, "nan": str(root / "nan_adapter")}


def _hold_lock(folder: Path) -> subprocess.Popen:
    """Another live process holding the run folder's lock (as a running 'reft train' would)."""
    folder.mkdir(parents=True, exist_ok=True)
    code = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode()); print('held', flush=True); "
            "time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(folder / LOCK_NAME)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def _interrupt_at_step(step: int):
    """Ctrl-C in the middle of training: the compute_loss of step ``step + 1`` raises KeyboardInterrupt."""

    def patch(monkeypatch):
        from reft.trainer import ReftTrainer

        original = ReftTrainer.compute_loss

        def compute_loss(self, *args, **kwargs):
            if self.state.global_step == step:
                raise KeyboardInterrupt
            return original(self, *args, **kwargs)

        monkeypatch.setattr(ReftTrainer, "compute_loss", compute_loss)

    return patch


@dataclass
class Row:
    """One bad input: the command line (``{model}``, ``{encoder}``, ``{nan}``, ``{w}`` = the working folder,
    ``{out}``), the files to put in ``{w}`` first, the exit status and a regex the one message line must match."""

    argv: list[str]
    message: str
    code: int = 2
    files: dict[str, bytes] = field(default_factory=dict)
    before_load: bool = True  # the error is known before the model loads: load_model must never be called
    writes_out: bool = False  # the command may leave something in --out (checkpoints to resume from)
    setup: object = None  # setup(world) -> a process to stop afterwards, or None
    patch: object = None  # patch(monkeypatch)


def _train(*extra: str, data: str = "{w}/data.jsonl", out: str = "{out}") -> list[str]:
    return ["train", "--model", "{model}", "--data", data, "--out", out, *TRAIN, *extra]


def _gen(*extra: str) -> list[str]:
    return ["generate", "--model", "{model}", "--prompt", "hello", "--max-new-tokens", "4", *extra]


ROWS = {
    # data lines
    "json value not an object": Row(_train(), r"data\.jsonl:2: a JSON list where an object is expected.*e\.g\. "
                                    r'\{"prompt"', files={"data.jsonl": LINE1 + b"[1, 2]\n"}),
    "non-UTF-8 bytes": Row(_train(), r"data\.jsonl:3: not UTF-8 text \(byte 0xff at column 13\): save the file as "
                           "UTF-8", files={"data.jsonl": GOOD + b'{"prompt": "\xff"}\n'}),
    "invalid JSON": Row(_train(), r"data\.jsonl:1: not valid JSON", files={"data.jsonl": b'{"prompt": \n'}),
    "missing field": Row(_train(), r"data\.jsonl:1 lacks string field\(s\) \['response'\]",
                         files={"data.jsonl": b'{"prompt": "p"}\n'}),
    "empty response": Row(_train(), r"data\.jsonl:2: empty 'response': every example needs text there",
                          files={"data.jsonl": LINE1 + b'{"prompt": "p", "response": " "}\n'}),
    "empty prompt to generate": Row(["generate", "--model", "{model}", "--prompt", ""], r"--prompt #1 is empty"),
    "no data file": Row(_train(data="{w}/nope.jsonl"), r"--data .*nope\.jsonl: no such file"),
    "prompt alone longer than --max-length": Row(
        _train("--max-length", "8"), r"data\.jsonl:1: prompt of \d+ tokens does not fit max_length=8: raise "
        "max_length", files={"data.jsonl": GOOD}, before_load=False),
    # output paths
    "train --out is a file": Row(_train(), r"out is a file: give a folder",
                                 files={"data.jsonl": GOOD, "out": b"mine"}),
    "train --out under a file": Row(_train(out="{w}/f/run"), r"cannot create .*/f/run: .*/f is a file",
                                    files={"data.jsonl": GOOD, "f": b"mine"}),
    "generate --out is a folder": Row(_gen("--out", "{w}/d"), r"--out .*/d: .*/d is a folder: give a file path",
                                      files={"d/keep": b"x"}),
    "generate --out under a file": Row(_gen("--out", "{w}/f/x.jsonl"), r"--out .*: cannot create .*/f is a file",
                                       files={"f": b"mine"}),
    "generate --out is the --prompts file": Row(
        ["generate", "--model", "{model}", "--prompts", "{w}/p.jsonl", "--out", "{w}/./p.jsonl"],
        r"--out .*p\.jsonl is the --prompts file: writing there would replace your input",
        files={"p.jsonl": b'{"prompt": "a", "id": 1}\n'}),
    "generate --out exists": Row(_gen("--out", "{w}/o.jsonl"), r"--out .*o\.jsonl exists: give a new path, or add "
                                 "--overwrite", files={"o.jsonl": b"mine"}),
    "generate --prompts rows without a prompt": Row(
        ["generate", "--model", "{model}", "--prompts", "{w}/p.csv"], r"p\.csv:row 1 lacks string field\(s\) "
        r"\['prompt'\]", files={"p.csv": b"question,id\nhi,1\n"}),
    "eval --out under a file": Row(["eval", "--task", "boolq", "--model", "{model}", "--out", "{w}/f/r.json"],
                                   r"--out .*: cannot create .*/f is a file", files={"f": b"mine"}),
    "train --out holds an earlier run's checkpoints": Row(
        _train(), r"holds checkpoints of an earlier run \(newest: checkpoint-3\): continue it with --resume",
        files={"data.jsonl": GOOD, "out/checkpoints/checkpoint-3/reft_config.json": b"{}",
               "out/reft_run.json": b"{}"}),
    "train --out of files reft did not write": Row(
        _train(), r"holds loss_curve\.png without reft_run\.json or an adapter: files reft did not write",
        files={"data.jsonl": GOOD, "out/loss_curve.png": b"x"}),
    "train --out in use by another run": Row(
        _train(), r"is in use by another reft run \(pid \d+\): wait for it to end", files={"data.jsonl": GOOD},
        setup=lambda w: _hold_lock(w / "out")),
    # generation arguments out of range
    "--num-beams 0": Row(_gen("--num-beams", "0"), r"argument --num-beams: must be a positive integer, got '0'"),
    "--batch-size -2": Row(_gen("--batch-size", "-2"), r"argument --batch-size: must be a positive integer"),
    "--max-new-tokens 0": Row(_gen("--max-new-tokens", "0"), r"argument --max-new-tokens: must be a positive"),
    "--temperature nan": Row(_gen("--temperature", "nan"), r"argument --temperature: must be a finite number"),
    "--temperature 0": Row(_gen("--temperature", "0"), r"argument --temperature: must be a finite number > 0"),
    # training arguments that cannot train
    "--lr inf": Row(_train("--lr", "inf"), r"argument --lr: must be a finite number, got 'inf'"),
    "--lr nan": Row(_train("--lr", "nan"), r"argument --lr: must be a finite number, got 'nan'"),
    "--lr 0": Row(_train("--lr", "0"), r"argument --lr: must be a finite number > 0"),
    "--epochs 0": Row(_train("--epochs", "0"), r"argument --epochs: must be a finite number > 0"),
    "--rank 0": Row(_train("--rank", "0"), r"argument --rank: must be a positive integer"),
    "--dropout 1": Row(_train("--dropout", "1"), r"argument --dropout: must be in \[0, 1\)"),
    "--positions that do not parse": Row(_train("--positions", "f7x"), r"cannot parse positions 'f7x'",
                                         files={"data.jsonl": GOOD}),
    # models and adapters
    "an encoder to generate": Row(["generate", "--model", "{encoder}", "--prompt", "hi"],
                                  r"--model .*bert is an encoder \(bert\): reft generate needs a causal language "
                                  "model"),
    "no such model": Row(_gen()[:1] + ["--model", "{w}/none", "--prompt", "hi"], r"--model .*none: model .* is not "
                         "'smollm2' or 'minilm' nor a folder with a config.json"),
    "an adapter with NaN weights": Row(_gen("--adapter", "{nan}"), r"holds non-finite weights \(layer1\.\S+ "
                                       r"\(nan\).*diverged"),
    "not an adapter folder": Row(_gen("--adapter", "{w}"), r"no reft_config\.json in .*: is this a reft adapter"),
    # inputs longer than the model's context (128 tokens)
    "a prompt longer than the context": Row(
        ["generate", "--model", "{model}", "--prompts", "{w}/p.jsonl", "--max-new-tokens", "8"],
        r"p\.jsonl:2: the prompt has 1\d\d tokens; with max_new_tokens=8 that is more than the model's context of "
        "128 tokens", files={"p.jsonl": b'{"prompt": "a"}\n{"prompt": "' + b"x" * 130 + b'"}\n'}, before_load=False),
    "an example longer than the context": Row(
        _train("--max-length", "512", "--no-chat-template"), r"data\.jsonl:2: 1\d\d tokens, more than the model's "
        r"context of 128: set max_length \(--max-length\) to at most 128",
        files={"data.jsonl": LINE1 + b'{"prompt": "p", "response": "' + b"y" * 140 + b'"}\n'}, before_load=False),
    # Ctrl-C
    "Ctrl-C in training": Row(_train("--save-steps", "1", "--epochs", "3"), r"interrupted: rerun the same command "
                              r"with --resume to continue from .*checkpoints/checkpoint-2$", code=130,
                              files={"data.jsonl": GOOD}, before_load=False, writes_out=True,
                              patch=_interrupt_at_step(2)),
    "Ctrl-C before a checkpoint": Row(_train(), r"interrupted: no checkpoint was saved, nothing to resume "
                                      r"\(--save-steps N", code=130, files={"data.jsonl": GOOD}, before_load=False,
                                      patch=_interrupt_at_step(0)),
}


def _messages(err: str, command: str) -> list[str]:
    """The error / interruption lines of stderr (progress bars may share a line with them; warnings are separate)."""
    return re.findall(rf"reft {command}: (?:error|interrupted): [^\r\n]*", err)


@pytest.mark.parametrize("case", list(ROWS), ids=list(ROWS))
def test_cli_user_errors_are_one_line_and_change_nothing(case, assets, tmp_path, monkeypatch, capfd):
    row = ROWS[case]
    world = tmp_path / "w"
    world.mkdir()
    for name, data in row.files.items():
        (world / name).parent.mkdir(parents=True, exist_ok=True)
        (world / name).write_bytes(data)
    holder = row.setup(world) if row.setup else None
    monkeypatch.chdir(world)
    loads = []
    real_load = harness_models.load_model
    monkeypatch.setattr(harness_models, "load_model", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    if row.patch:
        row.patch(monkeypatch)
    out = world / "out"
    argv = [a.format(w=world, out=out, **assets) for a in row.argv]
    before = tree_state(tmp_path, skip=[out] if row.writes_out else [])
    try:
        code = cli_main(argv)
    except SystemExit as e:  # argparse: what the reft script exits with
        code = e.code
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
    err = capfd.readouterr().err
    assert "Traceback" not in err
    lines = _messages(err, argv[0])
    assert len(lines) == 1, err
    assert re.search(row.message, lines[0]), lines[0]
    assert code == row.code, err
    if row.before_load:
        assert err == lines[0] + "\n"  # nothing else: no usage block, no warnings, no progress
    assert tree_state(tmp_path, skip=[out] if row.writes_out else []) == before  # no empty run folder either
    if row.before_load:
        assert loads == []


def test_cli_warns_in_one_line_about_responses_cut_to_fit(assets, tmp_path, capfd):
    """A response cut by --max-length is not silent: one warning line with the counts; the run succeeds."""
    (tmp_path / "data.jsonl").write_bytes(LINE1 + b'{"prompt": "p", "response": "' + b"y" * 40 + b'"}\n')
    argv = [a.format(w=tmp_path, out=tmp_path / "out", **assets) for a in _train("--max-length", "24")]
    assert cli_main(argv) == 0
    warnings = [line for line in capfd.readouterr().err.splitlines() if line.startswith("reft train: warning: ")]
    assert any(re.search(r"1 of 2 responses were cut to fit max_length=24 \(up to \d+ tokens lost", w)
               for w in warnings), warnings


def test_ctrl_c_says_which_checkpoint_to_resume_from(assets, tmp_path):
    """A real SIGINT to a real 'reft train' process: the step finishes and is saved; exit 130, one line naming that
    checkpoint (the newest), no traceback."""
    (tmp_path / "data.jsonl").write_bytes(GOOD)
    out = tmp_path / "out"
    argv = [a.format(w=tmp_path, out=out, **assets) for a in _train("--save-steps", "1", "--epochs", "2000")]
    env = os.environ | {"PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                        "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "reft.cli.main", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while not (out / "checkpoints" / "checkpoint-2").is_dir():
        assert proc.poll() is None and time.time() < deadline, "training never reached its second checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"still running 60 s after SIGINT; its stderr:\n{err}")
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "Ctrl-C: the step in progress will finish, then training will save a checkpoint and stop" in err
    lines = _messages(err, "train")
    assert len(lines) == 1 and re.search(r"interrupted: rerun the same command with --resume to continue from "
                                         r".*checkpoint-\d+$", lines[0]), err
    checkpoint = lines[0].rsplit(" ", 1)[1]
    assert os.path.isdir(checkpoint) and checkpoint == last_checkpoint(out)
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    assert state["global_step"] >= 2
