"""A hub-ready folder of two named adapters on the embedded SmolLM2-135M-Instruct: each sub-folder gets a model
card (README.md), the folder without a top-level adapter says what it holds, and each adapter loads by name.

    .venv/bin/python examples/hub_folder.py [--out runs/hub_folder]

Two LoReFTs are trained briefly on demo.py's task (different layers and ranks), loaded into one ReftModel under
names and saved with one ``save_pretrained``: ``extract_deep/`` and ``extract_shallow/``, peft's layout.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extraction_task import make_task  # noqa: E402

from reft import ReftConfig, ReftModel  # noqa: E402
from reft.generation import generate_texts, prompt_format, render_chat  # noqa: E402
from reft.harness.models import load_model  # noqa: E402
from reft.harness.recipe import TrainSettings, train_reft  # noqa: E402

ADAPTERS = {"extract_deep": ReftConfig(layers="15;21", positions="f7+l7", rank=4),
            "extract_shallow": ReftConfig(layers="3;9", positions="l3", rank=2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/hub_folder")
    ap.add_argument("--examples", type=int, default=48)
    args = ap.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)  # the example's own folder: each run starts clean
    model, tokenizer = load_model("smollm2")
    train, heldout = make_task(seed=0, n_train=args.examples, n_heldout=2)
    fmt = prompt_format(tokenizer, chat_template=True)
    for name, config in ADAPTERS.items():
        trained, _ = train_reft(model, tokenizer, config, [render_chat(tokenizer, ex["prompt"]) for ex in train],
                                [ex["response"] for ex in train], out / "runs" / name, TrainSettings(epochs=2),
                                progress=False, prompt_format=fmt)
        trained.unload()

    both = ReftModel(model)
    for name in ADAPTERS:
        both.load_adapter(out / "runs" / name / "adapter", adapter_name=name)
    folder = out / "extraction-adapters"
    both.save_pretrained(folder, training={"data": f"examples/extraction_task.py ({len(train)} examples)"})
    print(f"saved {folder}: " + ", ".join(sorted(p.name for p in folder.iterdir())))
    card = (folder / "extract_shallow" / "README.md").read_text()
    print("\n--- extract_shallow/README.md (first lines) ---\n" + "\n".join(card.splitlines()[:22]) + "\n---\n")
    bare = both.unload()

    try:
        ReftModel.from_pretrained(bare, folder)
    except (FileNotFoundError, ValueError) as e:
        print(f"from_pretrained on the folder itself: {e}\n")
    loaded = ReftModel.from_pretrained(bare, folder / "extract_deep", adapter_name="extract_deep")
    loaded.load_adapter(folder / "extract_shallow", adapter_name="extract_shallow")
    prompt = render_chat(tokenizer, heldout[0]["prompt"])
    for name in ADAPTERS:
        loaded.set_adapter(name)
        answer = generate_texts(loaded.eval(), tokenizer, [prompt], max_new_tokens=24, progress=False)[0]
        print(f"{name:>16}: {answer}")
    print(f"{'expected':>16}: {heldout[0]['response']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
