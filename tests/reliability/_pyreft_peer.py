"""Runs inside a venv with pyreft 0.1.0 (not collected by pytest): builds pyreft models, saves them, writes logits.

    python _pyreft_peer.py BASE_DIR OUT_DIR CASES_JSON

For each case: a pyreft ReftModel on the saved base model with randomised intervention weights (only the strictly
lower part of torch's orthogonal parametrisation is perturbed: pyreft's map reads the diagonal as ±1), saved with
``ReftModel.save`` to OUT_DIR/<name>/pyreft, and pyreft's own intervened logits for a fixed batch written to
OUT_DIR/<name>/logits.safetensors.
"""

from __future__ import annotations

import json
import os
import sys

import pyreft
import torch
import transformers
from safetensors.torch import save_file


def main(base_dir: str, out_dir: str, cases_json: str) -> None:
    cases = json.loads(cases_json)
    model = transformers.AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    hidden = model.config.hidden_size
    ids = torch.tensor(cases[0]["input_ids"])
    mask = torch.ones_like(ids)
    for case in cases:
        torch.manual_seed(case["seed"])
        cls = getattr(pyreft, case["pyreft_class"])
        layers = case["layers"] * (2 if case["untied"] else 1)
        kwargs = {"embed_dim": hidden, "low_rank_dimension": case["rank"], "dtype": torch.float32}
        if case.get("act"):
            kwargs["act_fn"] = case["act"]
        if "add_bias" in case:
            kwargs["add_bias"] = case["add_bias"]
        reps = [{"layer": layer, "component": "block_output", "low_rank_dimension": case["rank"],
                 "intervention": cls(**kwargs)} for layer in layers]
        reft_model = pyreft.get_reft_model(model, pyreft.ReftConfig(representations=reps), set_device=False)
        with torch.no_grad():
            for intervention in reft_model.interventions.values():
                for name, p in intervention.named_parameters():
                    noise = 0.5 * torch.randn_like(p)
                    if name.endswith("parametrizations.weight.original"):
                        noise = noise.tril(diagonal=-1)
                    p.add_(noise)
        first, last = case["positions"]
        n = ids.shape[1]
        head, tail = list(range(first)), list(range(n - last, n))
        if case["untied"]:
            locations = [head] * len(case["layers"]) + [tail] * len(case["layers"])
        else:
            locations = [head + tail] * len(layers)
        unit_locations = [[loc] * ids.shape[0] for loc in locations]  # [intervention][batch][position]
        with torch.no_grad():
            _, out = reft_model({"input_ids": ids, "attention_mask": mask},
                                unit_locations={"sources->base": (None, unit_locations)})
        dest = os.path.join(out_dir, case["name"])
        os.makedirs(dest, exist_ok=True)
        reft_model.save(os.path.join(dest, "pyreft"))
        save_file({"logits": out.logits.contiguous()}, os.path.join(dest, "logits.safetensors"))
    print(json.dumps({"pyreft": pyreft.__version__ if hasattr(pyreft, "__version__") else "0.1.0",
                      "transformers": transformers.__version__, "torch": torch.__version__}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
