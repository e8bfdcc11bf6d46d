"""The reft-vs-pyreft benchmark, one command: every run in its own process, side by side, on this machine.

    bash benchmarks/peer_env.sh          # once: pyreft 0.1.0, pyvene 0.1.8 and reft in one venv (.peer-venv)
    .venv/bin/python benchmarks/run.py   # or: make bench   [--settings abc] [--limit-train N]

For each task shape (extraction, short, long_prompt, long_response; see shapes.py) and setting (a, b, c; see
common.py) it runs pyreft (peer_pyreft.py in the peer venv) and reft (reft_side.py) --repeats times each with seeds
42, 43, ..., alternating which library goes first so drift in the machine's speed hits both, then the frozen-model
floor (reft_side.py --floor). Both libraries run in the one venv peer_env.sh builds (same third-party
packages; ``--reft-env dev`` runs reft in the venv run.py was started from instead). Results are keyed
``<setting>`` for the extraction shape, ``<shape>/<setting>`` else. It writes benchmarks/results/benchmark.json,
benchmark.md (the table in the README) and benchmark.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from common import DESCRIPTION, LAYERS, machine_load  # noqa: E402

PEER_PY = HERE / ".peer-venv" / "bin" / "python"
OUT = HERE / "results"


def run(cmd: list[str], out: Path, reuse: bool = False) -> dict:
    if reuse and out.exists():
        print(f"reusing {out}", flush=True)
        return json.loads(out.read_text())
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=os.environ | {"TOKENIZERS_PARALLELISM": "false"})
    print(f"  {time.perf_counter() - t0:.0f} s", flush=True)
    return json.loads(out.read_text())


def aggregate(runs: list[dict]) -> dict:
    """One library's figures over its repeats (seeds 42, 43, ...): speed and memory as medians, loss and exact
    match as means with their range, and every run kept under ``runs``."""
    med = statistics.median
    gen = [r["generation"] for r in runs]
    return {
        "repeats": len(runs), "seeds": [r["seed"] for r in runs],
        "examples_per_s": med(r["examples_per_s"] for r in runs),
        "tokens_per_s": med(r["tokens_per_s"] for r in runs),
        # per epoch: epoch 1 computes everything; later epochs may reuse what the frozen model computed (reft)
        "epoch_examples_per_s": [med(r["n_train"] / r["epoch_s"][e] for r in runs)
                                 for e in range(min(len(r["epoch_s"]) for r in runs))],
        "peak_rss_mib": med(r["peak_rss_mib"] for r in runs),
        "final_epoch_loss": statistics.fmean(r["final_epoch_loss"] for r in runs),
        "final_epoch_loss_range": [min(r["final_epoch_loss"] for r in runs), max(r["final_epoch_loss"] for r in runs)],
        "exact_match": statistics.fmean(r["exact_match"] for r in runs),
        "exact_match_range": [min(r["exact_match"] for r in runs), max(r["exact_match"] for r in runs)],
        "generation": {k: med(g[k] for g in gen) for k in ("batch16_ratio", "batch16_ratio_median", "batch1_ratio")},
        "runs": runs,
    }


def ratios(reft: dict, peer: dict, fl: dict) -> dict:
    step = 1 / reft["examples_per_s"]
    # runs of one repeat ran back to back: their ratio is the least affected by the machine's drift
    paired = [r["examples_per_s"] / p["examples_per_s"] for r, p in zip(reft["runs"], peer["runs"])]
    return {
        "examples_per_s_reft_over_pyreft": reft["examples_per_s"] / peer["examples_per_s"],
        "examples_per_s_reft_over_pyreft_paired": paired,
        "tokens_per_s_reft_over_pyreft": reft["tokens_per_s"] / peer["tokens_per_s"],
        "epoch_examples_per_s_reft_over_pyreft": [r / p for r, p in zip(reft["epoch_examples_per_s"],
                                                                          peer["epoch_examples_per_s"])],
        "step_over_floor_response_logits": step / (1 / fl["response_logits_examples_per_s"]),
        "step_over_floor_full_logits": step / (1 / fl["full_logits_examples_per_s"]),
        "peak_rss_reft_over_pyreft": reft["peak_rss_mib"] / peer["peak_rss_mib"],
        **_em_difference(reft, peer),
    }


def _em_difference(reft: dict, peer: dict) -> dict:
    """reft − pyreft held-out exact match with two 95% half-widths.

    * across seeds (Welch): each run (seed) is one sample. This is the one to read: every seed scores the same
      held-out examples, and runs of one library differ by up to ~15 points between seeds, far more than the
      binomial spread of one run;
    * binomial, pooling every (seed, example) as an independent trial: too narrow when seeds vary that much.
    """
    from scipy import stats

    em = [[r["exact_match"] for r in x["runs"]] for x in (reft, peer)]
    p = [reft["exact_match"], peer["exact_match"]]  # means over the runs (aggregate)
    seeds = {}
    if min(len(e) for e in em) > 1:
        v = [statistics.variance(e) / len(e) for e in em]
        df = sum(v) ** 2 / sum(x**2 / (len(e) - 1) for x, e in zip(v, em)) if sum(v) else 1.0
        seeds = {"exact_match_difference_95_across_seeds": float(stats.t.ppf(0.975, df)) * math.sqrt(sum(v))}
    n = [sum(r["n_heldout"] for r in x["runs"]) for x in (reft, peer)]
    se = math.sqrt(sum(q * (1 - q) / k for q, k in zip(p, n)))
    return {"exact_match_reft_minus_pyreft": p[0] - p[1], "exact_match_difference_95": 1.96 * se, **seeds}


def _range(x: dict, key: str, fmt: str) -> str:
    lo, hi = x[f"{key}_range"]
    return f"{x[key]:{fmt}}" + (f" ({lo:{fmt}}–{hi:{fmt}})" if x["repeats"] > 1 else "")


def table(results: dict) -> str:
    n = results["repeats"]
    rows = ["| setting | library | ex/s | tok/s | final loss, mean (range) | held-out EM, mean (range) | peak RSS MiB "
            "| gen b16 ReFT÷bare | gen b1 ReFT÷bare |", "|---|---|---|---|---|---|---|---|---|"]
    for s, r in results["settings"].items():
        for lib in ("pyreft", "reft"):
            x = r[lib]
            g = x["generation"]
            rows.append(f"| {s}: {DESCRIPTION[s.split('/')[-1]]} | {lib} | {x['examples_per_s']:.2f} | "
                        f"{x['tokens_per_s']:.0f} | "
                        f"{_range(x, 'final_epoch_loss', '.4f')} | {_range(x, 'exact_match', '.1%')} | "
                        f"{x['peak_rss_mib']:.0f} | {g['batch16_ratio']:.3f} | {g['batch1_ratio']:.3f} |")
    rows += ["", "| setting | reft ÷ pyreft ex/s (target ≥ 2.0) | per repeat | per epoch | step ÷ floor, response "
             "logits (≤ 1.10) | step ÷ floor, full logits | RSS reft ÷ pyreft (≤ 0.8) "
             "| floor ex/s (response / full logits) | EM reft − pyreft (95%: across seeds; binomial) |",
             "|---" * 9 + "|"]
    for s, r in results["settings"].items():
        q, f = r["ratios"], r["floor"]
        paired = ", ".join(f"{x:.2f}" for x in q["examples_per_s_reft_over_pyreft_paired"])
        epochs = " / ".join(f"{x:.2f}" for x in q["epoch_examples_per_s_reft_over_pyreft"])
        seeds = q.get("exact_match_difference_95_across_seeds")
        across = "(one seed)" if seeds is None else f"± {seeds:.1%}"
        rows.append(f"| {s} | {q['examples_per_s_reft_over_pyreft']:.2f} | {paired} | {epochs} | "
                    f"{q['step_over_floor_response_logits']:.2f} | {q['step_over_floor_full_logits']:.2f} | "
                    f"{q['peak_rss_reft_over_pyreft']:.2f} | {f['response_logits_examples_per_s']:.2f} / "
                    f"{f['full_logits_examples_per_s']:.2f} | {q['exact_match_reft_minus_pyreft']:+.1%} "
                    f"{across}; ± {q['exact_match_difference_95']:.1%} |")
    v = results["versions"]
    rows += ["", f"SmolLM2-135M-Instruct fp32, CPU, {results['threads']} threads, batch 8, lr 4e-3, 2 epochs, "
             f"{results['n_train']} training / {results['n_heldout']} held-out examples; {n} repeat(s) per library "
             f"and setting (other shapes: {results.get('shape_repeats', n)}; seeds 42, 43, …), libraries alternating. "
             "Speed, RSS and generation ratios: medians over "
             "repeats (generation: best of 5 batched calls per run); loss and EM: means. Versions: "
             + ", ".join(f"{k} {x}" for k, x in v.items()) + "."]
    return "\n".join(rows) + "\n"


def chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(results["settings"])
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    width = 0.27
    for i, (lib, key) in enumerate((("pyreft", "pyreft"), ("reft", "reft"), ("floor (response logits)", None))):
        vals = [results["settings"][s]["floor"]["response_logits_examples_per_s"] if key is None
                else results["settings"][s][key]["examples_per_s"] for s in settings]
        ax.bar([j + (i - 1) * width for j in range(len(settings))], vals, width, label=lib)
    ax.set_xticks(range(len(settings)), [f"({s})" for s in settings])
    ax.set_ylabel("training examples / s")
    ax.set_title("SmolLM2-135M, CPU 2 threads: reft vs pyreft")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", default="abc")
    ap.add_argument("--shapes", default="extraction,short,long_prompt,long_response")
    ap.add_argument("--limit-train", type=int, default=None)
    ap.add_argument("--limit-heldout", type=int, default=None, help="fewer held-out prompts (a quick smoke run)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=6,
                    help="runs per library and setting of the extraction shape (seeds 42, 43, ...); 6 take about 2 "
                         "hours on 2 CPU cores")
    ap.add_argument("--shape-repeats", type=int, default=2,
                    help="runs per library and setting of the other shapes (default: %(default)s; about 25 min for "
                         "short, 2 hours each for long_prompt and long_response here)")
    ap.add_argument("--out", default=str(OUT), help="results folder (default: %(default)s)")
    ap.add_argument("--reft-env", choices=("bench", "dev"), default="bench",
                    help="bench (default): reft in the peer venv, on the same packages as pyreft; dev: in this "
                         "python's venv, whose optional packages (peft, bitsandbytes, scipy, ...) transformers' "
                         "Trainer imports when present (~100 MiB of RSS more)")
    ap.add_argument("--reuse", action="store_true",
                    help="keep runs already in benchmarks/results/raw (e.g. to finish an interrupted benchmark)")
    args = ap.parse_args()
    if not PEER_PY.exists():
        print(f"no peer venv at {PEER_PY}: run 'bash benchmarks/peer_env.sh' first", file=sys.stderr)
        return 2
    # the de-quantised model cache first, in its own process: a run that builds it would count the GGUF
    # conversion in its peak RSS and time
    subprocess.run([str(PEER_PY), str(HERE / "model_cache.py")], check=True, stdout=subprocess.DEVNULL)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "raw"
    tmp.mkdir(exist_ok=True)
    extra = ["--threads", str(args.threads)]
    for opt in ("limit_train", "limit_heldout"):
        if getattr(args, opt):
            extra += [f"--{opt.replace('_', '-')}", str(getattr(args, opt))]
    reft_py = [str(PEER_PY) if args.reft_env == "bench" else sys.executable, str(HERE / "reft_side.py")]
    results = {"settings": {}, "reft_env": args.reft_env, "threads": args.threads, "repeats": args.repeats,
               "shape_repeats": args.shape_repeats,
               "machine_load_start": machine_load()}
    floors: set[Path] = set()
    for shape, s in [(shape, s) for shape in args.shapes.split(",") for s in args.settings]:
        key = s if shape == "extraction" else f"{shape}/{s}"
        tag = s if shape == "extraction" else f"{shape}_{s}"
        runs = {"pyreft": [], "reft": []}
        for rep in range(args.repeats if shape == "extraction" else args.shape_repeats):
            seed = ["--seed", str(42 + rep), "--shape", shape]
            peer_out, reft_out = tmp / f"pyreft_{tag}_r{rep}.json", tmp / f"reft_{tag}_r{rep}.json"
            jobs = {"pyreft": ([str(PEER_PY), str(HERE / "peer_pyreft.py"), "--setting", s, "--out", str(peer_out)]
                               + seed + extra, peer_out),
                    "reft": (reft_py + ["--setting", s, "--out", str(reft_out)] + seed + extra, reft_out)}
            for lib in ("pyreft", "reft") if rep % 2 == 0 else ("reft", "pyreft"):  # alternate who goes first
                runs[lib].append(run(*jobs[lib], args.reuse))
        peer, reft = aggregate(runs["pyreft"]), aggregate(runs["reft"])
        # the floor depends only on the lowest intervened layer: settings b and c share it (within this invocation)
        floor_file = tmp / f"floor_{shape}_layer{min(LAYERS[s])}.json"
        fl = run(reft_py + ["--setting", s, "--shape", shape, "--floor", "--out", str(floor_file)] + extra,
                 floor_file, args.reuse or floor_file in floors)
        floors.add(floor_file)
        results["settings"][key] = {"pyreft": peer, "reft": reft, "floor": fl, "ratios": ratios(reft, peer, fl)}
        first_reft, first_peer = runs["reft"][0], runs["pyreft"][0]
        results |= {"n_train": first_reft["n_train"], "n_heldout": first_reft["n_heldout"],
                    "versions": {"reft": first_reft["versions"]["reft"], "pyreft": first_peer["versions"]["pyreft"],
                                 "pyvene": first_peer["versions"]["pyvene"], "torch": first_reft["versions"]["torch"],
                                 "transformers (reft)": first_reft["versions"]["transformers"],
                                 "transformers (pyreft)": first_peer["versions"]["transformers"]}}
        print(json.dumps({key: results["settings"][key]["ratios"]}, indent=2), flush=True)
    results["machine_load_end"] = machine_load()
    (out / "benchmark.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "benchmark.md").write_text(table(results))
    chart(results, out / "benchmark.png")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
