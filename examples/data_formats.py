"""Data in, runs out, on the embedded SmolLM2-135M-Instruct: one training set in every format ``reft train --data``
reads, the same examples from each, then a run from a ``datasets`` folder with TensorBoard logging (offline) and
one from a ``datasets.Dataset`` in Python.

    .venv/bin/python examples/data_formats.py [--out runs/data_formats]

Formats: JSONL, CSV, Parquet, a ``save_to_disk`` folder (all ``prompt``/``response``) and JSONL chat ``messages``
(the last, assistant turn is the response).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from pathlib import Path

import torch
from datasets import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extraction_task import make_task  # noqa: E402

from reft import ReftConfig  # noqa: E402
from reft.cli.main import main as reft_cli  # noqa: E402
from reft.data_files import load_examples  # noqa: E402
from reft.generation import prompt_format  # noqa: E402
from reft.harness.models import load_model  # noqa: E402
from reft.harness.recipe import TrainSettings, train_reft  # noqa: E402


def write_formats(rows: list[dict], root: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = {"jsonl": root / "train.jsonl", "csv": root / "train.csv", "parquet": root / "train.parquet",
             "datasets folder": root / "train_dataset", "chat messages": root / "chat.jsonl"}
    paths["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    with paths["csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["prompt", "response"])
        writer.writeheader()
        writer.writerows(rows)
    Dataset.from_list(rows).to_parquet(str(paths["parquet"]))
    Dataset.from_list(rows).save_to_disk(str(paths["datasets folder"]))
    paths["chat messages"].write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}]}) + "\n"
        for r in rows))
    return paths


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/data_formats")
    ap.add_argument("--examples", type=int, default=48)
    args = ap.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)  # the example's own folder: each run starts clean
    rows, _ = make_task(seed=0, n_train=args.examples, n_heldout=1)
    paths = write_formats(rows, out / "data")
    model, tokenizer = load_model("smollm2")

    rendered = {}
    for name, path in paths.items():
        examples = load_examples(path)
        rendered[name] = (examples.rendered_prompts(tokenizer, True), examples.responses)
        print(f"{name:>16}: {len(examples)} examples from {path.name}")
    reference = rendered["jsonl"]
    assert all(v == reference for v in rendered.values()), "the formats disagree"
    print("every format gives the same prompts (through SmolLM2's chat template) and responses")

    # the CLI on the datasets folder, logging to TensorBoard (event files in the run folder, no server, no network)
    code = reft_cli(["train", "--data", str(paths["datasets folder"]), "--out", str(out / "cli_run"), "--layers",
                     "3;9;15;21", "--positions", "f7+l7", "--epochs", "1", "--report-to", "tensorboard"])
    assert code == 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "cli_run" / "tensorboard")).Reload()
    losses = [e.value for e in events.Scalars("train/loss")]
    print(f"tensorboard: {len(losses)} train/loss points, {losses[0]:.3f} → {losses[-1]:.3f} "
          f"({out / 'cli_run' / 'tensorboard'})")

    # Python: a datasets.Dataset straight in
    examples = load_examples(Dataset.from_list(rows))
    config = ReftConfig(layers="3;9;15;21", positions="f7+l7", rank=4)
    _, metrics = train_reft(model, tokenizer, config, examples.rendered_prompts(tokenizer, True), examples.responses,
                            out / "python_run", TrainSettings(epochs=1), progress=False,
                            prompt_format=prompt_format(tokenizer, chat_template=True))
    curve = metrics["loss_curve"]
    print(f"python run on a datasets.Dataset: loss {curve[0][1]:.3f} → {curve[-1][1]:.3f} ({out / 'python_run'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
