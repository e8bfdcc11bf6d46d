"""The reft-vs-pyreft benchmark, one command: every run in its own process, side by side, on this machine.

    bash benchmarks/peer_env.sh          # once: the pyreft 0.1.0 + pyvene 0.1.8 virtualenv (benchmarks/.peer-venv)
    .venv/bin/python benchmarks/run.py   # or: make bench   [--settings abc] [--limit-train N]

For each setting (a, b, c; see common.py) it runs, alternating libraries so load on the machine hits both: pyreft
(peer_pyreft.py in the peer venv), reft (reft_side.py) and the frozen-model floor (reft_side.py --floor). It writes
benchmarks/results/benchmark.json, benchmark.md (the table in the README) and benchmark.png (bar chart).
"""

from __future__ import annotations

import argparse
import json
import os
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


def ratios(reft: dict, peer: dict, fl: dict) -> dict:
    step = 1 / reft["examples_per_s"]
    return {
        "examples_per_s_reft_over_pyreft": reft["examples_per_s"] / peer["examples_per_s"],
        "tokens_per_s_reft_over_pyreft": reft["tokens_per_s"] / peer["tokens_per_s"],
        "step_over_floor_response_logits": step / (1 / fl["response_logits_examples_per_s"]),
        "step_over_floor_full_logits": step / (1 / fl["full_logits_examples_per_s"]),
        "peak_rss_reft_over_pyreft": reft["peak_rss_mib"] / peer["peak_rss_mib"],
    }


def table(results: dict) -> str:
    rows = ["| setting | library | ex/s | tok/s | final loss | held-out EM | peak RSS MiB | gen b16 ReFT÷bare "
            "| gen b1 ReFT÷bare |", "|---|---|---|---|---|---|---|---|---|"]
    for s, r in results["settings"].items():
        for lib in ("pyreft", "reft"):
            x = r[lib]
            g = x["generation"]
            rows.append(f"| {s}: {DESCRIPTION[s]} | {lib} | {x['examples_per_s']:.2f} | {x['tokens_per_s']:.0f} | "
                        f"{x['final_epoch_loss']:.4f} | {x['exact_match']:.1%} | {x['peak_rss_mib']:.0f} | "
                        f"{g['batch16_ratio']:.3f} | {g['batch1_ratio']:.3f} |")
    rows += ["", "| setting | reft ÷ pyreft ex/s (target ≥ 2.0) | step ÷ floor, response logits (≤ 1.10) | "
             "step ÷ floor, full logits | RSS reft ÷ pyreft (≤ 0.8) | floor ex/s (response / full logits) |",
             "|---|---|---|---|---|---|"]
    for s, r in results["settings"].items():
        q, f = r["ratios"], r["floor"]
        rows.append(f"| {s} | {q['examples_per_s_reft_over_pyreft']:.2f} | {q['step_over_floor_response_logits']:.2f}"
                    f" | {q['step_over_floor_full_logits']:.2f} | {q['peak_rss_reft_over_pyreft']:.2f} | "
                    f"{f['response_logits_examples_per_s']:.2f} / {f['full_logits_examples_per_s']:.2f} |")
    v = results["versions"]
    rows += ["", f"SmolLM2-135M-Instruct fp32, CPU, {results['threads']} threads, batch 8, lr 4e-3, 2 epochs, "
             f"{results['n_train']} training / {results['n_heldout']} held-out examples. Versions: "
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
    ap.add_argument("--limit-train", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reuse", action="store_true",
                    help="keep runs already in benchmarks/results/raw (e.g. to finish an interrupted benchmark)")
    args = ap.parse_args()
    if not PEER_PY.exists():
        print(f"no peer venv at {PEER_PY}: run 'bash benchmarks/peer_env.sh' first", file=sys.stderr)
        return 2
    OUT.mkdir(exist_ok=True)
    tmp = OUT / "raw"
    tmp.mkdir(exist_ok=True)
    extra = ["--threads", str(args.threads)] + (["--limit-train", str(args.limit_train)] if args.limit_train else [])
    reft_py = [sys.executable, str(HERE / "reft_side.py")]
    results = {"settings": {}, "threads": args.threads, "machine_load_start": machine_load()}
    for s in args.settings:
        peer = run([str(PEER_PY), str(HERE / "peer_pyreft.py"), "--setting", s, "--out", str(tmp / f"pyreft_{s}.json")]
                   + extra, tmp / f"pyreft_{s}.json", args.reuse)
        reft = run(reft_py + ["--setting", s, "--out", str(tmp / f"reft_{s}.json")] + extra, tmp / f"reft_{s}.json",
                   args.reuse)
        # the floor depends only on the lowest intervened layer: settings b and c share it
        floor_file = tmp / f"floor_layer{min(LAYERS[s])}.json"
        fl = run(reft_py + ["--setting", s, "--floor", "--out", str(floor_file)] + extra, floor_file, True)
        results["settings"][s] = {"pyreft": peer, "reft": reft, "floor": fl, "ratios": ratios(reft, peer, fl)}
        results |= {"n_train": reft["n_train"], "n_heldout": reft["n_heldout"],
                    "versions": {"reft": reft["versions"]["reft"], "pyreft": peer["versions"]["pyreft"],
                                 "pyvene": peer["versions"]["pyvene"], "torch": reft["versions"]["torch"],
                                 "transformers (reft)": reft["versions"]["transformers"],
                                 "transformers (pyreft)": peer["versions"]["transformers"]}}
        print(json.dumps({s: results["settings"][s]["ratios"]}, indent=2), flush=True)
    results["machine_load_end"] = machine_load()
    (OUT / "benchmark.json").write_text(json.dumps(results, indent=2) + "\n")
    (OUT / "benchmark.md").write_text(table(results))
    chart(results, OUT / "benchmark.png")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
