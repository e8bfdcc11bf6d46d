"""Mixed ReFT adapters under the same client load on ``reft serve`` and on vLLM with reft's plugin, side by side.

    .venv/bin/python benchmarks/vllm_vs_serve.py [--clients 32] [--rounds 3] [--out …/vllm_vs_serve.json]

(The client and ``reft serve`` run in reft's venv; vLLM's server in ``.venv-vllm``, ``make venv-vllm``.) SmolLM2-135M-
Instruct fp32 on CPU, 8 random LoReFT adapters of the demo's shape (layers 3;9;15;21, f7+l7, rank 4), the load test's
chat prompts (~40 tokens) × 32 new tokens (greedy, ``ignore_eos``), ``--clients`` closed-loop streaming clients
(:func:`serve_load.load`). Both servers are up at once; only one is under load at a time; per round each server runs
``bare`` (every request on the base model), ``mixed`` (requests over the 8 adapters and the base, one running batch)
and ``single`` (every request on one adapter), the order rotating from round to round. vLLM: eager (the plugin's
requirement), prefix caching off (``reft serve`` has none, and repeated rounds would otherwise hit the cache), a
quarter of the RAM for the KV cache (on CPU ``--gpu-memory-utilization`` is a share of RAM), the adapter chosen by
``model`` as in ``reft serve``. Reported: tokens/s per (server, mode) over all rounds, ``mixed ÷
bare`` and ``mixed ÷ single`` of each server, and vLLM ÷ ``reft serve`` per mode (same machine, same run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from serve_load import ADAPTERS, Server, free_port, load, prompts  # noqa: E402
from vllm_mixed import make_adapters  # noqa: E402

MODES = ("bare", "mixed", "single")
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"


class VLLMServer(Server):
    """vLLM's OpenAI server with the reft plugin (``REFT_VLLM_ADAPTERS``), as a subprocess of the vLLM venv."""

    def __init__(self, model_dir: Path, adapters: dict[str, str], max_seqs: int, log_dir: Path) -> None:
        if not VLLM_PYTHON.exists():
            raise SystemExit(f"{VLLM_PYTHON} is missing: run `make venv-vllm` first")
        self.mode, self.port = "vllm", free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
               "--served-model-name", "smollm2", "--dtype", "float32", "--enforce-eager", "-O0",
               "--max-model-len", "512", "--max-num-seqs", str(max_seqs), "--no-enable-prefix-caching",
               "--gpu-memory-utilization", "0.25", "--port", str(self.port), "--disable-log-stats",
               "--uvicorn-log-level", "warning"]
        env = os.environ | {"REFT_VLLM_ADAPTERS": ",".join(f"{k}={v}" for k, v in adapters.items()),
                            "PYTHONPATH": str(ROOT / "src")}
        self.log = open(log_dir / "server-vllm.log", "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def cpu_seconds(self) -> float:
        """CPU time of the server and its children (vLLM's engine core runs in a child process)."""
        import psutil

        proc = psutil.Process(self.proc.pid)
        total = 0.0
        for p in [proc, *proc.children(recursive=True)]:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=64, help="requests per run (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of reft serve (vLLM takes the cores)")
    ap.add_argument("--logs", default="runs/vllm_vs_serve", help="the servers' logs (default: %(default)s)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "vllm_vs_serve.json"))
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    from reft.harness.models import smollm2_path

    model_dir = smollm2_path()
    work = Path(tempfile.mkdtemp(prefix="reft-vllm-vs-serve-"))
    dirs = make_adapters(model_dir, work)
    names = sorted(dirs)
    assert len(names) == ADAPTERS
    texts = prompts(64)
    models = {"bare": ["__base__"], "mixed": [*names, "__base__"], "single": [names[0]]}
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    servers = {"reft serve": Server("mixed", [Path(dirs[n]) for n in names], args.threads, logs),
               "vllm": VLLMServer(model_dir, dirs, args.clients, logs)}
    runs = []
    t0 = time.perf_counter()
    try:
        for srv in servers.values():
            srv.wait(600)
        for srv in servers.values():  # warm-up: every model once
            asyncio.run(load(srv.url, models["mixed"], texts, 3, 9, 4, 300))
        for k in range(args.rounds):
            for name in (list(servers) if k % 2 == 0 else list(servers)[::-1]):
                for mode in MODES[k % 3:] + MODES[:k % 3]:
                    run = asyncio.run(load(servers[name].url, models[mode], texts, args.clients, args.requests,
                                           args.new_tokens, 900, servers[name]))
                    run |= {"server": name, "mode": mode, "round": k}
                    runs.append(run)
                    print(f"round {k} {name:<10} {mode:<6} {run['requests']} req {run['failed']} failed "
                          f"{run['throughput_tok_s']:7.1f} tok/s  server CPU {run['server_cpu_per_s']:.2f}/s, "
                          f"others {run['other_cpu_per_s']:.2f}/s  ({time.perf_counter() - t0:.0f}s)", flush=True)
                    if run["failed"]:
                        raise SystemExit(f"{name} {mode}: {run['errors']}")
    finally:
        for srv in servers.values():
            srv.stop()
        shutil.rmtree(work, ignore_errors=True)
    tps = {name: {m: sum(r["tokens"] for r in runs if r["server"] == name and r["mode"] == m) /
                  sum(r["wall_s"] for r in runs if r["server"] == name and r["mode"] == m) for m in MODES}
           for name in servers}
    import torch

    result = {
        "model": "SmolLM2-135M-Instruct", "device": "cpu", "cores": os.cpu_count(), "torch": torch.__version__,
        "vllm": subprocess.run([str(VLLM_PYTHON), "-c", "import vllm; print(vllm.__version__)"], capture_output=True,
                               text=True).stdout.strip(),
        "clients": args.clients, "requests_per_run": args.requests, "rounds": args.rounds,
        "new_tokens": args.new_tokens, "adapters": ADAPTERS, "reft_serve_threads": args.threads,
        "tokens_per_s": tps,
        "mixed_over_bare": {n: t["mixed"] / t["bare"] for n, t in tps.items()},
        "mixed_over_single": {n: t["mixed"] / t["single"] for n, t in tps.items()},
        "vllm_over_reft_serve": {m: tps["vllm"][m] / tps["reft serve"][m] for m in MODES},
        "runs": [{k: v for k, v in r.items() if k != "records"} for r in runs],
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("tokens_per_s", "mixed_over_bare", "mixed_over_single",
                                             "vllm_over_reft_serve")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
