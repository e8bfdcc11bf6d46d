"""Where a training epoch's time goes, per task shape and setting, for reft (and pyreft in the peer venv).

    .venv/bin/python benchmarks/profile_step.py --shape short --setting a [--epochs 2] [--limit-train 64]
    benchmarks/.peer-venv/bin/python benchmarks/profile_step.py --peer --shape short --setting a

Trains as the benchmark's side does (same task, batch, lr, order; no held-out generation) and reports the training's
wall time split into phases — ``compute_loss`` (forward + loss), backward, optimizer step, batch collation, and the
rest (Trainer bookkeeping) — timed around those calls, then (``--ops``, a second run under ``torch.profiler``) the
top operators by self CPU time. Writes ``--profile-out`` (default
``benchmarks/results/profile/<library>_<shape>_<setting>.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from importlib import import_module
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peer", action="store_true", help="profile pyreft (run with the peer venv's python)")
    ap.add_argument("--ops", action="store_true", help="also profile operators (slower; phases then include it)")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--profile-out", default=None)
    from common import add_run_args

    add_run_args(ap)
    args, _ = ap.parse_known_args([*sys.argv[1:], "--out", "/dev/null"])
    torch.set_num_threads(args.threads)
    library = "pyreft" if args.peer else "reft"
    out = Path(args.profile_out or HERE / "results" / "profile" / f"{library}_{args.shape}_{args.setting}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    side = __import__("peer_pyreft" if args.peer else "reft_side")

    phases = {"compute_loss": 0.0, "backward": 0.0, "optimizer": 0.0, "collate": 0.0}

    def timed(name, fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                phases[name] += time.perf_counter() - t
        return wrapper

    original = side.Trainer.train

    def train(self, *a, **k):  # profile the training only (not the held-out generation that follows)
        self.compute_loss = timed("compute_loss", self.compute_loss)
        self.accelerator.backward = timed("backward", self.accelerator.backward)
        self.data_collator = timed("collate", self.data_collator)
        step: dict = {}
        optim = import_module("torch.optim.optimizer")  # the module (torch.optim.optimizer is the class's name)
        optim.register_optimizer_step_pre_hook(lambda *_: step.update(t=time.perf_counter()))
        optim.register_optimizer_step_post_hook(
            lambda *_: phases.__setitem__("optimizer", phases["optimizer"] + time.perf_counter() - step["t"]))
        from common import Timer

        timer = Timer()
        self.add_callback(timer)
        t0 = time.perf_counter()
        if args.ops:
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], with_flops=True) as prof:
                original(self, *a, **k)
        else:
            original(self, *a, **k)
        wall = time.perf_counter() - t0
        report = {"library": library, "shape": args.shape, "setting": args.setting, "train_wall_s": wall,
                  "phases_s": phases | {"rest": wall - sum(phases.values())}, "steps": self.state.global_step,
                  "epoch_s": timer.epoch_s}
        print(f"{library} {args.shape}/{args.setting}: train {wall:.1f} s over {self.state.global_step} steps; "
              + ", ".join(f"{k} {v:.1f} s ({v / wall:.0%})" for k, v in report["phases_s"].items())
              + "; epochs " + " / ".join(f"{t:.1f} s" for t in timer.epoch_s))
        if args.ops:
            events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:args.top]
            report["top_self_cpu"] = [{"op": e.key, "self_cpu_s": e.self_cpu_time_total / 1e6, "calls": e.count,
                                       "gflop": e.flops / 1e9} for e in events]
            for r in report["top_self_cpu"]:
                rate = f"  {r['gflop'] / r['self_cpu_s']:6.1f} GFLOP/s" if r["gflop"] else ""
                print(f"  {r['self_cpu_s']:8.2f} s {r['calls']:7d}  {r['gflop']:8.1f} GFLOP{rate}  {r['op']}")
        out.write_text(json.dumps(report, indent=1) + "\n")
        raise SystemExit(0)  # skip generation

    side.Trainer.train = train
    argv = [a for a in sys.argv[1:] if a not in ("--peer", "--ops")]
    skip = {"--top", "--profile-out"}
    argv = [a for i, a in enumerate(argv) if a not in skip and (i == 0 or argv[i - 1] not in skip)]
    if "--out" not in argv:
        argv += ["--out", "/dev/null"]
    side.main(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
