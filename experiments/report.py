"""Build docs/results.md from the result files of glue_minilm.py and decoder_smollm2.py.

    python experiments/report.py

Every number in the tables is read from results/**/*.json; runs that have not finished are shown as missing.
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
BENCH = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "results.md"
#: what the issue-16 runs show (written after reading them; the numbers it cites are in the tables it heads)
FINDINGS = """
**What these runs show** (numbers from the tables below):

* **pyreft parity on classification: shown, after two fixes that were ours.** At the paper's positions (`f3`), on
  SST-2 (2,000 examples, 3 epochs, 3 seeds, one plan per seed driving both libraries), reft reaches 75.6 ± 1.4 against
  pyreft's 76.1 ± 1.2 (75.8 ± 1.7 with its head-gradient bug fixed): within seed noise. With nothing random (dropout
  off) the two compute the same trajectory: step losses 2e-6 apart at step 10 and 2e-4 at step 50, final loss 0.356
  vs 0.357, the same prediction on 98.4% of the test half. The two differences, now options of `ReftConfig` that the
  paper's protocol (`--paper-hparams`, `experiments/glue_paper.py`) and `import_pyreft` use:
  * *the short-input rule* (`position_rule="half"`): pyreft edits min(p, ⌊n/2⌋) tokens for each part, reft's
    default min(p, n) for a lone `f3`; 394 of the 2,000 examples differ. Alone it moved reft from 72.7 to 73.2;
  * *R's chart* (`rotation="householder"`): reft's default holds R as the QR of a free matrix A stored at half scale,
    which matches pyreft's first Adam step but not its path. Without dropout the QR run's step losses part from
    pyreft's after about 10 steps (0.04 apart at step 50), train to a higher loss (0.368 vs 0.357) and score lower
    (74.2 ± 0.7 vs 75.7 ± 0.8). Adam steps per coordinate, and the two charts have different coordinates; holding R
    in torch's `orthogonal` parametrisation, as pyreft does, removes the gap. It costs a d×d buffer per
    intervention, so it is not the library's default.
* **GLUE, MiniLM-L6: the target is missed, and the evidence points at the method at this scale, not the library.**
  At the full protocol (both fixes), all five small tasks at 3 seeds, LoReFT (4,614 parameters) against LoRA r 8
  (73,728, 16× more): SST-2 79.9 ± 1.5 against 83.3 ± 1.8, CoLA 16.6 ± 7.2 MCC against 27.2 ± 6.4, MRPC 69.3 ± 3.5
  against 78.4 ± 5.0, RTE 48.2 ± 5.0 against 48.9 ± 4.7, STS-B 82.8 ± 1.1 against 85.2 ± 0.9: the table's gap on
  the five-task average. RTE separates nothing: every method is at chance on its 139-row test halves (probe
  48.7 ± 4.6, majority class 51.3 ± 1.1), LoRA driving its training loss to 0.013–0.027 without generalising; its
  −0.7 is noise, and without it the gap is larger (−6.4 over the other four). MRPC's LoReFT is the probe's equal
  (68.5 ± 4.5; final loss 0.56–0.61 against 0.57–0.62), both just above the majority class (67.5 ± 2.4). LoReFT
  comes closest on STS-B, the sentence similarity this encoder was trained for, where it also adds the most over
  the head alone (probe 50.4 ± 1.6: the encoder was trained to mean-pool, so its [CLS] alone says little).
  Each task's LoReFT rate was chosen on its seed-42 dev half from the paper's rate ×1, ×3, ×10 (SST-2 ×3, CoLA and
  STS-B ×10, MRPC and RTE ×1; MRPC's a tie with ×3 on its 204-row dev half, broken toward the smaller rate). Four
  measurements say that LoReFT runs out of capacity, not of steps or step size:
  * its final training loss stays near the probe's, far above LoRA's (per-run table): CoLA 0.44–0.54 (probe
    0.50–0.54, LoRA 0.09–0.13), MRPC 0.56–0.61 (LoRA 0.002–0.005), SST-2 0.17–0.23 (probe 0.35–0.38, LoRA 0.04–0.06),
    RTE 0.55–0.60 (probe 0.60–0.64), STS-B MSE 0.49–0.54 (probe 0.955–1.152, LoRA 0.11–0.12);
  * ten times the rate barely lowers it: CoLA seed 42 0.482, 0.446, 0.437 at ×1, ×3, ×10; MRPC 0.563, 0.536, 0.432;
    STS-B 0.680, 0.534, 0.488; RTE 0.571, 0.538, 0.560;
  * four times the rank (rank 4, 18,456 parameters, off the protocol) takes CoLA's only to 0.402 (seed 42: dev half
    27.4, test half 21.2 against rank 1's 22.8 and 23.9);
  * editing every token instead of 3 (`f32+l32`, tied: the same 4,614 parameters, off the protocol, seed 42 at each
    task's LoReFT rate) lowers it a little and does not close the gap: final loss SST-2 0.226 → 0.213, CoLA
    0.437 → 0.424, MRPC 0.563 → 0.463, STS-B 0.488 → 0.427; test half SST-2 80.5 → 81.4, CoLA 23.9 → 19.9, MRPC
    65.2 → 67.6, STS-B 82.8 → 84.5 (LoRA's seed 42: 82.6, 23.4, 74.0, 84.8), one seed each, so within noise.

  A rank-1 edit per layer, at 3 prefix tokens or at all of them, in a 6-layer, 384-wide sentence-embedding encoder
  whose [CLS] was never trained as a summary (the probe: 8.6 MCC on CoLA), has few ways to bring the head what it
  needs; LoRA changes attention at every token. The parity fixes move full-size SST-2 little (QR 79.6 ± 1.0, QR +
  reft's rule 79.0 ± 0.5). MRPC's halves disagree for a weak classifier: the seed-42 LoReFT adapter scores 81.9 on
  its dev half and 65.2 on its test half, reproduced by `reft eval --split dev|test` from the saved adapter; it
  answers "paraphrase" for 83% of the test half, where 65% are, and its score follows each half's share of positives
  (72% and 65% on seed 42). DiReFT (the same parameter count, a free W2 in place of the orthonormal R), its rate from
  the same grid, is below LoReFT at 3 seeds on every task that separates the methods: SST-2 75.5 ± 1.9 against 79.9 ±
  1.5, CoLA 8.2 ± 4.9 against 16.6 ± 7.2, MRPC 67.0 ± 5.8 against 69.3 ± 3.5 (RTE 51.1 ± 1.4: chance). Without R's
  constraint it is unstable at the high rates LoReFT takes: CoLA's ×10 trains it to a constant answer (MCC 0.0),
  RTE's ×10, chosen on seed 42's dev half, has its best dev epoch at the first on every seed (training loss
  0.70–0.71, chance), and STS-B's ×10, chosen on seed 42, fails on seeds 43 and 44 (9.5 and 16.0; training MSE 2.640
  and 2.435 against 0.732), so its STS-B cell is 35.7 ± 40.0. The paper's setting is RoBERTa (12–24 layers, d
  768–1,024) for 40–60 epochs; here 6 layers of 384 for 5–10.
* **A decoder task SmolLM2-135M learns:** SST-2 as generation, each seed on its own held-out half (3 seeds): LoReFT
  86.5 ± 0.9%, LoRA 88.6 ± 0.6%, DiReFT 81.6 ± 3.2% (same rank, layers and rate as LoReFT); base model 49.8 ± 2.6%,
  majority answer 52.7 ± 0.6%. LoReFT − LoRA = −2.1 points at 16.7× fewer parameters, LoReFT below LoRA on every
  seed (−1.6, −2.1, −2.5): every method far above the majority answer, LoReFT short of the 1-point target by about
  one point.
"""
NAMES = {"loreft": "LoReFT", "direft": "DiReFT", "lora": "LoRA"}
GLUE = ("sst2", "cola", "stsb", "mrpc", "rte")
GLUE_HEAD = {"sst2": "SST-2 acc", "cola": "CoLA MCC", "stsb": "STS-B P/S", "mrpc": "MRPC acc", "rte": "RTE acc"}
DECODER = ("boolq", "arc_e", "svamp")
DECODER_HEAD = {"boolq": "BoolQ acc", "arc_e": "ARC-e acc", "svamp": "SVAMP acc"}


def _load(folder: Path) -> list[dict]:
    runs = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []
    return [r for r in runs if "method" in r]  # skip tune/chosen.json


def _fmt(values: list[float]) -> str:
    if not values:
        return "–"
    mean = 100 * statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}"


def _params(runs: list[dict]) -> str:
    counts = {r["parameters"]["adapter"] for r in runs}
    return ", ".join(f"{c:,}" for c in sorted(counts)) if counts else "–"


def glue_section(runs: list[dict], tune: list[dict]) -> tuple[str, dict]:
    by = {}
    for r in runs:
        by.setdefault((r["method"], r["task"]), []).append(r)
    seeds = sorted({r["settings"]["seed"] for r in runs})
    lines = ["| method | adapter params | head params | " + " | ".join(GLUE_HEAD[t] for t in GLUE) + " | avg |",
             "|---|---:|---:|" + "---:|" * (len(GLUE) + 1)]
    averages = {}
    for method in NAMES:
        cells, means = [], []
        mine = [r for r in runs if r["method"] == method]
        for task in GLUE:
            scores = [r["eval"]["score"] for r in by.get((method, task), [])]
            cells.append(_fmt(scores) + (f" (n={len(scores)})" if scores and len(scores) < len(seeds) else ""))
            if scores:
                means.append(statistics.fmean(scores))
        # the average is over tasks of the per-task means, only when every task has finished
        avg = statistics.fmean(means) if len(means) == len(GLUE) else None
        averages[method] = avg
        head = max((r["parameters"]["head"] for r in mine), default=None)
        lines.append(f"| {NAMES[method]} | {_params(mine)} | {'–' if head is None else f'{head:,}'} | "
                     + " | ".join(cells) + f" | {'–' if avg is None else f'{100 * avg:.1f}'} |")
    info = {"seeds": seeds, "averages": averages}
    st = runs[0]["settings"] if runs else {}
    info["schedule"] = f"{st.get('epochs', '?'):g} epochs, batch {st.get('batch_size', '?')}" if st else "?"
    tune_lines = ["| method | lr | SST-2 dev-half score (best epoch) |", "|---|---:|---:|"]
    for r in sorted(tune, key=lambda r: (list(NAMES).index(r["method"]), r["settings"]["lr"])):
        tune_lines.append(f"| {NAMES[r['method']]} | {r['settings']['lr']:g} | {100 * r['train']['best_dev']:.1f} |")
    info["tune"] = "\n".join(tune_lines)
    n = {}
    for r in runs:
        n.setdefault(r["task"], (r["train_examples"], r["dev_examples"], r["eval"]["n"]))
    info["sizes"] = "\n".join(["| task | train subset | dev half used for selection | held-out test half |",
                               "|---|---:|---:|---:|"] +
                              [f"| {t} | {n[t][0]} | {n[t][1]} | {n[t][2]} |" for t in GLUE if t in n])
    walls = [r["wall_s"] for r in runs]
    info["time"] = (f"{len(runs)} runs, {sum(walls) / 60:.1f} min in all "
                    f"(median {statistics.median(walls):.0f} s per run)") if walls else "no runs yet"
    return "\n".join(lines), info


def decoder_section(runs: list[dict]) -> tuple[str, dict]:
    by = {(r["method"], r["task"]): r for r in runs}
    lines = ["| method | trainable params | " + " | ".join(DECODER_HEAD[t] for t in DECODER) + " | avg |",
             "|---|---:|" + "---:|" * (len(DECODER) + 1)]
    averages = {}
    for method in NAMES:
        mine = [r for r in runs if r["method"] == method]
        scores = [by[(method, t)]["eval"]["accuracy"] if (method, t) in by else None for t in DECODER]
        done = [s for s in scores if s is not None]
        avg = statistics.fmean(done) if len(done) == len(DECODER) else None
        averages[method] = avg
        lines.append(f"| {NAMES[method]} | {_params(mine)} | "
                     + " | ".join("–" if s is None else f"{100 * s:.1f}" for s in scores)
                     + f" | {'–' if avg is None else f'{100 * avg:.1f}'} |")
    sizes = ["| task | trained on | train subset | test examples | max new tokens | train s LoReFT / DiReFT / LoRA |",
             "|---|---|---:|---:|---:|---|"]
    for t in DECODER:
        rs = [by.get((m, t)) for m in NAMES]
        first = next((r for r in rs if r), None)
        if first is None:
            continue
        times = " / ".join("–" if r is None else f"{r['train']['train_runtime_s']:.0f}" for r in rs)
        sizes.append(f"| {t} | {first['train_task']} | {first['train_examples']} | {first['eval']['n']} | "
                     f"{first['eval']['max_new_tokens']} | {times} |")
    diag = ["| task | method | most frequent generated answer | its share | majority-answer baseline |",
            "|---|---|---|---:|---:|"]
    constant = []
    for t in ("boolq", "arc_e"):  # tasks with a small label set
        for m in NAMES:
            r = by.get((m, t))
            if r is None or "predictions" not in r["eval"]:
                continue
            preds = [p["prediction"] for p in r["eval"]["predictions"]]
            answers = [p["answer"] for p in r["eval"]["predictions"]]
            top = max(set(preds), key=preds.count)
            majority = max(answers.count(a) for a in set(answers)) / len(answers)
            share = preds.count(top) / len(preds)
            diag.append(f"| {t} | {NAMES[m]} | `{top[:60]}` | {100 * share:.0f}% | {100 * majority:.1f} |")
            if share >= 0.95:
                constant.append(f"{NAMES[m]} on {t} ({100 * share:.0f}% `{top}`)")
    walls = [r["wall_s"] for r in runs]
    note = ("Caveat: these averages include runs that give (almost) one constant answer: " + "; ".join(constant)
            + ". Such a score is the share of that label in the test subset, not evidence of task skill, so the "
            "average comparison is not evidence of parity.") if constant else ""
    info = {"averages": averages, "sizes": "\n".join(sizes), "diag": "\n".join(diag), "constant": note,
            "time": f"{len(runs)} runs, {sum(walls) / 60:.1f} min in all" if walls else "no runs yet"}
    return "\n".join(lines), info


def _gap(averages: dict, params: dict, per_task: dict | None = None) -> str:
    lo, lora = averages.get("loreft"), averages.get("lora")
    if lo is None or lora is None:
        return "not all runs have finished"
    ratio = params["lora"] / params["loreft"] if params.get("loreft") else float("nan")
    verdict = "meets" if lo >= lora - 0.01 and ratio >= 15 else "misses"
    tasks = ""
    if per_task:
        tasks = " (per task: " + ", ".join(f"{t} {100 * v:+.1f}" for t, v in per_task.items()) + ")"
    return (f"LoReFT − LoRA = {100 * (lo - lora):+.1f} points on average{tasks} with {ratio:.1f}× fewer trainable "
            f"(adapter) parameters: by the numbers this **{verdict}** the target (within 1 point at ≥ 15× fewer "
            "parameters)")


def _diffs(runs: list[dict], tasks: tuple[str, ...], key) -> dict:
    out = {}
    for t in tasks:
        a = [key(r) for r in runs if r["task"] == t and r["method"] == "loreft"]
        b = [key(r) for r in runs if r["task"] == t and r["method"] == "lora"]
        if a and b:
            out[t] = statistics.fmean(a) - statistics.fmean(b)
    return out


def _read(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def paper_protocol_section() -> str:
    """The prepared GLUE protocol (experiments/glue_paper.py), the base-dropout measurement, the pyreft parity smoke
    runs and the time estimate; the results table once results/glue_paper/summary.json has cells."""
    import sys

    sys.path.insert(0, str(ROOT / "src"))
    from reft.harness.tasks import get_task
    from reft.harness.tasks.glue import PAPER_GLUE, PAPER_GLUE_SHARED

    sys.path.insert(0, str(ROOT / "experiments"))
    from glue_paper import EPOCHS, LR_GRID, TRAIN_LIMIT

    rows = ["| task | train examples | dev half | test half | epochs | steps / epoch | lr (LoReFT, DiReFT) | dropout "
            "| warm-up ratio | positions |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for task, limit in TRAIN_LIMIT.items():
        spec, hp = get_task(task), PAPER_GLUE[task]
        n_train = len(spec.load("train")) if limit is None else limit
        n_dev, n_test = len(spec.load("dev", seed=42)), len(spec.load("test", seed=42))
        rows.append(f"| {task} | {n_train:,} | {n_dev} | {n_test} | {EPOCHS[task]:g} | {-(-n_train // 32)} | "
                    f"{hp.lr:g} | {hp.dropout:g} | {hp.warmup_ratio:g} | `{hp.positions}` |")
    bd = _read(RESULTS / "base_dropout" / "sst2.json")
    if bd:
        bd_rows = ["| frozen base's dropout | dev half, per epoch | best epoch (dev) | test half | last-epoch mean "
                   "training loss | train s |", "|---|---|---:|---:|---:|---:|"]
        for d in ("on", "off"):
            x = bd[d]
            bd_rows.append(f"| {d} | {' / '.join(_pct(h['dev']) for h in x['dev_history'])} | {_pct(x['best_dev'])} "
                           f"(epoch {x['best_epoch']:g}) | {_pct(x['test'])} | {x['last_epoch_mean_loss']:.3f} | "
                           f"{x['train_runtime_s']:.0f} |")
        bd_table = "\n".join(bd_rows)
        bd_pad = (f"{bd['off']['padded_tokens_per_epoch']:,} padded for {bd['off']['tokens_per_epoch']:,} real tokens "
                  "per epoch")
    else:
        bd_table, bd_pad = "(results/base_dropout/sst2.json missing)", "–"
    parity = _read(BENCH / "glue_parity_smoke.json")
    det = _read(BENCH / "glue_parity_smoke_nodropout.json")
    par_rows = ["| smoke run | library | test acc per seed | epoch-mean training loss per seed | first-step loss | "
                "mean abs step-loss difference to reft |", "|---|---|---|---|---|---:|"]
    for label, r in (("A: base dropout on, head dropout 0.1 (pyreft's setting)", parity),
                     ("B: nothing random (base and head dropout 0)", det)):
        if r is None:
            continue
        st = r["settings"]
        label += (f"; {st['train_examples']} train / {st['test_examples']} test, {st['epochs']:g} epochs, "
                  f"seed{'s' if ',' in st['seeds'] else ''} {st['seeds']}")
        for name in ("reft", "pyreft", "pyreft_fixed"):
            per = r["summary"]["per_seed"]
            if name not in per[0]:
                continue
            diff = ("–" if name == "reft" else
                    f"{statistics.fmean(row[f'reft_vs_{name}']['step_loss_difference_mean_abs'] for row in per):.4f}")
            first = ", ".join(f"{row[name]['first_loss']:.5f}" for row in per)
            par_rows.append(f"| {label} | {name} | {', '.join(_pct(row[name]['score']) for row in per)} | "
                            + "; ".join(" → ".join(f"{v:.4f}" for v in row[name]["epoch_mean_loss"]) for row in per)
                            + f" | {first} | {diff} |")
            label = ""
    checks = (parity or det or {}).get("summary", {}).get("checks", {})
    g = det["summary"]["per_seed"][0] if det else None

    def norms(name: str) -> str:
        return ", ".join(f"{v:.3f}" for v in g[name]["grad_norms_first_steps"]) if g and name in g else "–"

    estimate = (RESULTS / "glue_paper_smoke" / "estimate.md")
    estimate = estimate.read_text().strip() if estimate.is_file() else "(run `experiments/glue_paper.py --estimate`)"
    batching = (RESULTS / "glue_paper_smoke" / "batching.md")
    batching = batching.read_text().strip() if batching.is_file() else ""
    smoke = _read(RESULTS / "glue_paper_smoke" / "summary.json")
    smoke_runs = sum(len(c["scores"]) for t in (smoke or {}).get("cells", {}).values() for c in t.values())
    smoke_tasks = ", ".join((smoke or {}).get("cells", {}))
    grids = "; ".join(f"{m} {', '.join(f'{x:g}' for x in v)}" for m, v in LR_GRID.items())
    shared = PAPER_GLUE_SHARED
    return f"""## GLUE at the paper's protocol: the protocol in full

The whole plan (5 tasks × 4 methods × 3 seeds at 10 epochs) takes about a day of this CPU; the results at the top
of this file ran the part that fits one session (SST-2 and CoLA; LoReFT, LoRA, the probe). The smoke runs and
short measurements below are marked as such.

### What `experiments/glue_paper.py` runs

The paper's GLUE protocol (Tables 9–10; `reft.harness.suite.paper_glue_setup`, `reft train --paper-hparams`) on
MiniLM-L6 (6 layers, d = 384) instead of RoBERTa:

* **data**: the whole GLUE train split, except SST-2: a seeded subset of 8,000 of its 67,349 (subset seed 0, the same
  for every method and seed). The GLUE dev file is divided by the run's seed into the in-training dev half (epoch
  and learning-rate selection) and the held-out test half (reported only), as in the paper (pyreft's
  `random_split` of the validation set; ours hashes `seed:row`, `reft.harness.tasks.glue.split_dev_indices`);
* **every method**: batch {shared["batch_size"]}, AdamW (`adamw_torch_fused`, β = (0.9, 0.999), ε = 1e-8), the
  linear schedule with the task's warm-up ratio, weight decay {shared["weight_decay"]:g}, gradient clipping at norm 1
  (`Trainer`'s default, pyreft's too), max length {shared["max_length"]}, batches grouped by length (transformers'
  `LengthGroupedSampler`), the same head `W_o tanh(W_d h_CLS + b_d) + b_o` (dropout 0.1) trained with the adapter,
  the best epoch on the dev half, the frozen base's dropout **off** (below);
* **LoReFT / DiReFT**: rank {shared["rank"]}, every layer (6 interventions), untied, `block_output`, the task's
  positions, dropout and learning rate (table); 4,614 adapter parameters (2·d·r + r per layer);
* **LoRA**: rank 8, α = 16, on `query` and `value` of every layer (peft), the task's dropout as `lora_dropout`;
* **probe**: the head alone on the frozen encoder (148,610 parameters, the head every method trains);
* **learning rates**: `--proxy-tune` (what the results above used): each method's published rate (ReFT paper for
  LoReFT/DiReFT, LoRA paper for LoRA) × a multiplier (1, 3, 10) chosen on a short SST-2 run by the dev half of
  seed 42, then used on every task; without it LoReFT and DiReFT take the paper's per-task rate (`--tune-reft`
  grids ×⅓, ×1, ×3) and LoRA and the probe choose from a full-size grid ({grids}) by the dev-half score of seed 42,
  never the test half (the probe always does: with its cached features a run costs one encoder pass);
* **seeds** 42, 43, 44 (the first three of the paper's); cells mean ± sample sd; wall and training time per run
  recorded; finished runs are skipped on a rerun (`results/glue_paper/<task>/<method>-lr<lr>-s<seed>.json`).

{chr(10).join(rows)}

Steps per epoch at batch 32; the dev/test halves shown are seed 42's (every seed's have the same sizes).
Not in the plan: QNLI (no train split in the shared data; its settings are in `PAPER_GLUE`: `f11`, lr 9e-4),
MNLI and QQP (not in the shared data).

### The frozen base's dropout: off

* **pyreft: on.** `Trainer` calls `model.train()` every step; pyvene's `IntervenableModel.train()` is
  `self.model.train(mode)`, so the frozen base's dropout (MiniLM: hidden and attention dropout 0.1) is active during
  training; pyreft's `examples/loreft/train.py` also calls `reft_model.model.train()` ("train enables dropout but no
  grads"). That `train()` never reaches the interventions (they are not under `self.model`): pyreft's in-training
  GLUE evaluation puts them in eval mode and nothing puts them back, so by the code (pyreft 0.1.0, pyvene 0.1.8; not
  run) the interventions' own dropout acts only until the first evaluation, i.e. in epoch 1.
* **reft until now: on** (the same reason: `model.train()` on the whole wrapper).
* **Measured**, two short runs (`reft train --task sst2 --model minilm --paper-hparams --limit 2000 --epochs 3
  --seed 42 --base-dropout on|off`, one thread, shared CPU; `results/base_dropout/sst2.json`):

{bd_table}

* **Choice: off** (`reft.harness.classification.BASE_DROPOUT = False`, `reft train --base-dropout off` by default
  for GLUE tasks; `--base-dropout on` is pyreft's behaviour). Off scored higher on the dev half (the choice is made
  there), trained to a lower loss and took 6% less time; the gap (1.1 dev points, 5 of 436 examples) is within the
  noise of one run, so the deciding argument is that with the base frozen its dropout only perturbs the features the
  adapter learns on, while at test time the base runs without it. The full runs can revisit it
  (`experiments/glue_paper.py --base-dropout on`).

### Length-grouped batches

Random batches pad every row to the longest of 32 random rows; grouped batches (transformers'
`get_length_grouped_indices`: a seeded permutation cut into mega-batches of 50 × 32 rows, each sorted by length)
pad to about the row's own length, and every example is still seen once per epoch
(`tests/harness/test_glue_protocol.py`). Per epoch, with the MiniLM tokenizer (the last column: examples where
pyreft's and reft's position rules differ for `f3`, below):

{batching}

The SST-2 runs above ran {bd_pad} (2,000 examples).

### Parity with pyreft: `benchmarks/glue_parity.py`

Both libraries train from one plan per seed: the same examples (train in file order, the seed's test half), the
same batch order in every epoch (length-grouped, seeded per epoch), the same initial R, W, b and head (drawn once by
reft and loaded into both), the same `TrainingArguments`; each library runs in its own process (pyreft 0.1.0 +
pyvene 0.1.8 in `benchmarks/.peer-venv`, driven as pyreft's GLUE pipeline drives it: its dataset conventions,
`get_reft_model`, `LoreftIntervention`, `ReftTrainerForSequenceClassification`). Defaults: MRPC (full train set),
the paper's MRPC settings, 10 epochs, seeds 42–44, the base's dropout on (pyreft's), the interventions' dropout 0
(the libraries define it differently: pyreft drops out Φ(h), reft the edit Φ(h) − h). Checks in every run: both
sides consumed the plan's order ({checks.get("same_order_as_plan", "–")}), the same optimiser settings
({checks.get("same_optimizer_settings", "–")}), the same token ids ({checks.get("same_input_ids", "–")}),
examples edited at different positions: {checks.get("examples_with_different_positions", "–")}.

**Found, pyvene: the head's gradient is never cleared.** `IntervenableModel.zero_grad()` clears the interventions'
gradients only, and `Trainer` clears gradients through `model.zero_grad()`: the head (a trainable part of the
wrapped model) accumulates the sum of every step's gradient. Its gradient norm then grows step after step, and since
`Trainer` clips the total norm to 1, the interventions' share of each step shrinks. Smoke run B below, total
gradient norm of steps 1–4: reft {norms("reft")}; pyreft {norms("pyreft")} (the same at step 1, where the parameters
and the batch are identical; then the head's sum grows). The parity script therefore runs pyreft twice per seed: as
released (`pyreft`) and with the head's gradient cleared after every step (`pyreft_fixed`: {norms("pyreft_fixed")},
reft's to 0.3%).
The paper's GLUE numbers were trained with the accumulating head gradient; reft clears it (nothing to fix on our
side). A second pyreft issue met on the way: `LoreftIntervention.load_state_dict` writes R into only the first r
columns of the orthogonal parametrization's d×d base, which is then no longer orthogonal, so a loaded R drifts off
the unit sphere once trained (‖R‖ 0.996–1.0014 after 12 steps); the parity script assigns R through torch's
parametrization instead.

Smoke runs (**smoke: 64–128 training examples, 2–3 epochs; not evidence of parity at scale**; MRPC, the paper's
settings; `benchmarks/results/glue_parity_smoke*.json` and `.png`):

{chr(10).join(par_rows)}

Reading: with nothing random (B) the first-step losses are identical and reft follows `pyreft_fixed` to 0.001 per
step over 12 steps (the remaining gap: the two parametrizations of the orthonormal R, QR of A in reft, torch's
Householder map in pyreft, drift apart as R turns); as released, pyreft's curve separates by 0.003–0.005 within
those 12 steps. With dropout (A) the two libraries draw different dropout masks, so single curves differ by the
dropout noise (the first-step loss of the same weights and batch over 60 dropout draws: 0.7497 ± 0.0097 in reft,
0.7508 ± 0.0097 in pyreft); two seeds of 2 steps cannot resolve more. The full run (`.venv/bin/python
benchmarks/glue_parity.py`: MRPC, 3,668 examples, 10 epochs, 3 seeds × 3 runs) takes about 3.5 hours here and
reports, per library, the mean test accuracy ± sd over seeds, the final-epoch loss, and whether reft − pyreft is
within two standard errors of the seed spread.

### Time on this machine

Throughput of each method measured on each task (`experiments/glue_paper.py --measure`: 6 training steps of 32
through the sweep's own path, one thread, shared 2-core CPU; per method the median over tasks), times the plan's
padded tokens, plus dev and test scoring:

{estimate}

These rates come from 6-step timings; the two 2,000-example SST-2 runs above trained at about 1,020 padded tokens/s
against 1,654 for LoReFT here, so on a busy machine budget up to 1.6× this (about a day and a half on one thread);
two threads when the machine is free bring it to well under a day. The smoke run of the whole sweep
(`--smoke`: 64 training examples, 1 epoch, 32 dev and 64 test examples; results/glue_paper_smoke/) exercised
{smoke_runs} table runs on {smoke_tasks or "–"}; its scores are meaningless.

### Known differences from the paper

* MiniLM-L6 instead of RoBERTa-base/large: 6 layers (6 interventions), d = 384;
* the interventions' dropout: reft drops out the edit Φ(h) − h, pyreft the whole Φ(h) (and, by the code, only in
  epoch 1, above);
* the head's gradient: cleared every step here, accumulated in pyreft (above);
* `f3` on short inputs: pyreft edits min(3, ⌊n/2⌋) tokens (padding the rest with an unattended pad token), reft
  min(3, n): they differ for inputs of 3–5 tokens, which are 20% of the SST-2 subset (table above) and none of MRPC;
* epochs: 10 on every task (the issue's minimum for the small tasks; what fits the CPU), not the paper's;
* learning rates of LoRA and the probe chosen on the dev half from a 3-point grid; ReFT's are the paper's RoBERTa
  rates.

"""


def main() -> None:
    glue_runs = _load(RESULTS / "glue_minilm")
    dec_runs = _load(RESULTS / "decoder_smollm2")
    glue_table, g = glue_section(glue_runs, _load(RESULTS / "glue_minilm" / "tune"))
    dec_table, d = decoder_section(dec_runs)
    glue_params = {m: next((r["parameters"]["adapter"] for r in glue_runs if r["method"] == m), None) for m in NAMES}
    dec_params = {m: next((r["parameters"]["adapter"] for r in dec_runs if r["method"] == m), None) for m in NAMES}
    env = (glue_runs or dec_runs or [{}])[0].get("environment", {})
    chosen = RESULTS / "glue_minilm" / "tune" / "chosen.json"
    lrs = json.loads(chosen.read_text()) if chosen.is_file() else {}
    from report_paper import issue16_section

    text = f"""# Results: ReFT vs LoRA on the task suite (CPU runs)

Generated by `python experiments/report.py` from `results/**/*.json` and `benchmarks/results/*.json`; every number
below is read from those files.

{issue16_section(FINDINGS)}
## Earlier small-budget runs (before issue 16)

**Hardware and budget.** A shared 2-core x86-64 CPU, no GPU; every run used one thread (`torch.set_num_threads(1)`,
`nice -n 10`) while two other engineers ran tests and benchmarks on the same cores, so wall times are inflated and
noisy. Software: torch {env.get("torch", "?")}, transformers {env.get("transformers", "?")},
peft {env.get("peft", "?")}, Python {env.get("python", "?")}. Because of this budget, all training sets are small
subsets and training is short (1–2 epochs); these numbers compare methods under identical small budgets and are
**not** comparable with the paper's full-data numbers.
ReFT runs here predate storing the orthonormal R's matrix at half scale (`INIT_SCALE`, which doubles R's step
under Adam to match pyreft's): not re-run since.

## Encoder: MiniLM-L6 (`load_model("minilm")`, d = 384, 6 layers) on GLUE

Protocol (the paper's GLUE protocol, scaled down): train on a fixed random subset of the GLUE train split (subset
seed 0, the same for every method and seed); after each epoch, score the in-training dev half (its first 200
examples) and keep the best epoch; report the task metric on the **whole held-out test half**. The dev/test
halves are drawn with the run's seed (`get_task(t).load("dev"|"test", seed=s)`), so each seed also has its own
split, shared by the three methods. Seeds {", ".join(map(str, g["seeds"]))}; cells are mean ± sample sd over
seeds, ×100. STS-B: mean of Pearson and Spearman; CoLA: Matthews correlation; the others accuracy.

* LoReFT / DiReFT: rank 1, every layer, position `f1` (the [CLS] token), tied, `block_output`.
* LoRA: rank 8, α = 16, dropout 0.05, on `query` and `value` of every layer (peft).
* Both: the same head, `softmax(W_o tanh(W_d h_CLS + b_d) + b_o)` (MSE on the scalar output for STS-B), trained with
  the adapter; {g["schedule"]}, linear decay, no warmup, max length 128, length-grouped batches.
* Learning rate per method chosen on the SST-2 dev half (seed 0) only: {", ".join(f"{NAMES[m]} {v:g}"
                                                                             for m, v in lrs.items())} (selection
  runs: 600 SST-2 training examples, batch 16, 2 epochs; this was the first plan, which did not fit the CPU budget,
  so the sweep below uses smaller subsets and batch 8 with the rates chosen there).

{glue_table}

Adapter parameters exclude the head (as in the paper's tables); the head is identical for all methods (2-class
head shown; the STS-B regression head has 385 fewer).
{_gap(g["averages"], glue_params, _diffs(glue_runs, GLUE, lambda r: r["eval"]["score"]))}.

Subset sizes:

{g["sizes"]}

Learning-rate selection (SST-2 dev half of seed 0, first 200 examples; 600 training examples, batch 16, 2 epochs;
never the test half):

{g["tune"]}

Run time: {g["time"]}.

## Decoder: SmolLM2-135M-Instruct (`load_model("smollm2")`, d = 576, 30 layers) on generation tasks

Protocol: train on a fixed random subset of the training split (subset seed 0, same for every method) for one
epoch (batch 8, linear decay), then greedy generation on the first N examples of the test file, scored by the
task's scorer (`reft.harness.tasks`: label after "the correct answer is" for BoolQ/ARC-e, last number within 1e-3 for
SVAMP). Prompts are the paper's Alpaca template, without the chat template. One seed (0). No hyper-parameters were
tuned (no dev split was run): learning rates were fixed in advance (ReFT 4e-3, LoRA 2e-3).

* LoReFT / DiReFT: rank 4 on layers 3, 8, 13, 18, 23, 28, positions `f7+l7` (first and last 7 prompt tokens), tied.
* LoRA: rank 8, α = 16, dropout 0.05 on `q_proj` and `v_proj` of all 30 layers (peft); the same tokenisation,
  collator (prompt labels −100) and response-only loss.

{dec_table}

{_gap(d["averages"], dec_params, _diffs(dec_runs, DECODER, lambda r: r["eval"]["accuracy"]))}.
{d["constant"]}

{d["sizes"]}

How the answers are distributed on the label tasks (a model that always gives the same label scores that label's
share; the majority-answer baseline is the best such constant):

{d["diag"]}

The LLM-Adapters BoolQ items used by the paper hold the question only, without the passage, so most of them are
not answerable from the prompt and the majority answer ("true") is a strong baseline. "–": the run did not fit
the CPU budget (DiReFT was run last on each task and dropped first).

Run time: {d["time"]}. One test example is worth 0.5 (200 examples) to 2.5 (40 examples) accuracy points, and a
95% binomial interval at 60% accuracy is about ±7 points on 200 examples and ±15 on 40: differences of a few points
here are noise.

## Against the issue's target (LoReFT within 1 point of LoRA on average at ≥ 15× fewer parameters)

* GLUE (MiniLM): {_gap(g["averages"], glue_params, _diffs(glue_runs, GLUE, lambda r: r["eval"]["score"]))}.
* Generation (SmolLM2): {_gap(d["averages"], dec_params, _diffs(dec_runs, DECODER, lambda r: r["eval"]["accuracy"]))}.
  {d["constant"]}

What was tried: one learning-rate grid per method on the SST-2 dev half (table above), nothing else. What was not
tried, for lack of CPU time: more epochs (the paper trains GLUE for tens of epochs; here the rank-1 interventions and
the new head get 2 epochs of 150–300 examples, i.e. 38–76 optimiser steps), larger ranks or more positions
(`f3`), learning rates per task, and a dev split for the generation tasks. At these budgets all three methods are
far below their full-data numbers and close to trivial baselines on several tasks (CoLA MCC near 0, BoolQ at the
majority answer, ARC-e below chance), so the comparison says little about the methods at the paper's scale.

{paper_protocol_section()}## Reproduce

```bash
nice -n 10 .venv/bin/python experiments/glue_minilm.py      # LR choice on SST-2 dev; 5 tasks × 3 methods × 3 seeds
nice -n 10 .venv/bin/python experiments/decoder_smollm2.py  # 3 tasks × 3 methods
nice -n 5 .venv/bin/python experiments/glue_paper.py --proxy-tune --methods loreft,lora  # rates (~10 min)
nice -n 5 .venv/bin/python experiments/glue_paper.py --tasks sst2,cola --methods loreft,lora,probe  # resumable
nice -n 5 .venv/bin/python experiments/decoder_sst2.py     # SmolLM2, SST-2 as generation
.venv/bin/python benchmarks/glue_parity.py --task sst2 --limit 2000 --epochs 3 --name glue_parity_sst2
nice -n 10 .venv/bin/python experiments/glue_paper.py       # the whole protocol (about a day; resumable)
.venv/bin/python experiments/report.py                      # this file
```

Single runs through the CLI (the same code path, `reft.harness.suite.run_task`):

```bash
reft train --task sst2 --model minilm --limit 300 --method loreft --rank 1 --positions f1 --epochs 2 \\
    --batch-size 8 --max-length 128 --lr {lrs.get("loreft", 2e-3):g} --seed 0 --out runs/sst2-loreft
reft train --task sst2 --model minilm --limit 300 --method lora --lora-rank 8 --epochs 2 --batch-size 8 \\
    --max-length 128 --lr {lrs.get("lora", 2e-3):g} --seed 0 --out runs/sst2-lora
reft eval --task sst2 --model minilm --adapter runs/sst2-loreft/adapter --seed 0   # the training seed
reft train --task svamp --train-task math_data_3k --limit 80 --eval-limit 40 --max-new-tokens 128 \\
    --layers "3;8;13;18;23;28" --positions f7+l7 --rank 4 --epochs 1 --no-chat-template --out runs/svamp-loreft
reft eval --task svamp --adapter runs/svamp-loreft/adapter --limit 40 --max-new-tokens 128 --no-chat-template
```

(The CLI selects the GLUE epoch on the whole dev half; the scripts cap it at 200 examples to save time.)
Per-run files: `results/glue_minilm/<task>-<method>-s<seed>.json`, `results/decoder_smollm2/<task>-<method>.json`
(with every generated answer).
"""
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)
    print(f"wrote {DOC}")
    for number in unquoted(FINDINGS, text.replace(FINDINGS, "")):
        print(f"FINDINGS cites {number}, which no table shows: update the prose", flush=True)


def unquoted(prose: str, tables: str) -> list[str]:
    """The scores (``79.9 ± 1.5``, ``65.2``) the hand-written prose cites that the generated tables do not show."""
    cited = re.findall(r"(?<![\d.])\d{1,2}\.\d(?: ± \d+\.\d)?(?![\d.])", prose)
    return sorted({c for c in cited if c not in tables})


if __name__ == "__main__":
    main()
