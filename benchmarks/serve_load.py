"""Load test of ``reft serve`` on loopback: N concurrent streaming clients, requests spread over 8 adapters + base.

    .venv/bin/python benchmarks/serve_load.py [--clients 1,4,16,64] [--out benchmarks/results/serve_load.json]

SmolLM2-135M-Instruct fp32 on CPU; chat prompts of ~40 tokens (the demo's extraction task, through the chat template);
32 new tokens each (greedy, ``ignore_eos`` so that every request costs the same). Three servers run side by side
(``reft serve`` subprocesses on 127.0.0.1, each with the same 8 adapters of the demo's shape, random weights); only
one is under load at a time, and the order of the modes rotates from one client count to the next, so that drift of
the machine hits all alike:

* ``mixed``: the server as shipped: requests for any adapter share one running batch;
* ``bare``: the same requests, all on the base model, sent to the same server process (the cost ``mixed`` must
  match: target ÷ ≥ 0.95); both run twice per client count, in mirrored order;
* ``grouped``: ``--batching grouped``: one adapter's requests at a time, swapped when the batch drains (target:
  mixed ≥ 3× this at 16+ clients);
* ``subbatch``: ``--batching subbatch``: peft-style, every step runs one forward per adapter present.

Each client sends its next request as soon as the previous one is answered (closed loop); a run is bounded in
requests and time. Throughput = completion tokens ÷ the run's wall time; time to first token (TTFT) = first streamed
token; latency = last chunk. The machine may be shared: each run records the CPU that other processes took
meanwhile (``/proc/stat`` minus the server and the client), and a run they disturbed (> ``--disturbed`` CPU/s) is
measured again, up to twice; figures use the undisturbed runs (else the least disturbed). Then, on the ``mixed``
server: ``--resident`` more adapters are loaded at run time (``POST /v1/load_adapter``; time per load, memory per
adapter from the server's RSS) and a 16-client run is repeated with requests spread over 64 of them. Writes JSON
(per-request records included) and a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "examples"))

ADAPTERS = 8
CONFIG = dict(layers="3;9;15;21", positions="f7+l7", rank=4)  # the demo's adapter shape
MODES = ("mixed", "bare", "grouped", "subbatch")
BATCHING = {"mixed": "mixed", "bare": "mixed", "grouped": "grouped", "subbatch": "subbatch"}
REQUESTS = {1: 9, 4: 18, 16: 48, 64: 128}  # per run (a multiple of the 9 models where it can be)


def make_adapters(root: Path, count: int) -> tuple[list[Path], dict]:
    """``count`` LoReFT adapters of the demo's shape for SmolLM2 (random weights: serving cost does not depend on
    them), saved under ``root``; and :func:`prefill_cost` measured on them."""
    import torch

    from reft import ReftConfig, get_reft_model
    from reft.harness.models import load_model

    model, _ = load_model("smollm2")
    reft_model = get_reft_model(model, None)
    torch.manual_seed(0)
    paths = []
    for i in range(count):
        reft_model.add_adapter(f"a{i}", ReftConfig(**CONFIG))
        for p in reft_model.adapters[f"a{i}"].parameters():
            torch.nn.init.normal_(p, std=0.02)
        reft_model.save_pretrained(root, selected_adapters=[f"a{i}"])  # → root/a{i} (peft's layout)
        paths.append(root / f"a{i}")
    cost = prefill_cost(reft_model, count)
    return paths, cost | {"adapter_memory": adapter_memory(reft_model, paths[0], 500)}


def adapter_memory(reft_model, path: Path, count: int) -> dict:
    """Resident memory per loaded adapter: RSS of this process before and after loading ``count`` copies of ``path``
    (``malloc_trim`` first, so that freed heap pages do not hide or inflate the growth), and the parameter bytes."""
    import ctypes
    import gc

    libc = ctypes.CDLL("libc.so.6")

    def rss_kib() -> float:
        gc.collect()
        libc.malloc_trim(0)
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

    before = rss_kib()
    t0 = time.perf_counter()
    for k in range(count):
        reft_model.load_adapter(path, adapter_name=f"m{k}")
    seconds = (time.perf_counter() - t0) / count
    after = rss_kib()
    params = sum(p.numel() * p.element_size() for p in reft_model.adapters["m0"].parameters())
    for k in range(count):
        reft_model.delete_adapter(f"m{k}")
    return {"loaded": count, "rss_kib_per_adapter": (after - before) / count, "parameter_kib": params / 1024,
            "load_s_in_process": seconds}


def prefill_cost(reft_model, count: int, rounds: int = 6) -> dict:
    """CPU seconds (this process, 1 thread) of the server's prefill call, mixed over ``count`` adapters + base vs
    bare, for 1 and 16 prompts of 50 tokens, alternating; medians. The prefill is the only call in which mixed and
    bare requests differ (decode steps are the same bare-model call), and CPU time, unlike wall time, hardly moves
    when other processes share the machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    try:
        for rows in (1, 16):
            ids = torch.randint(100, 10_000, (rows, 50), generator=torch.Generator().manual_seed(rows))
            mask = torch.ones_like(ids)
            names = {"bare": [None] * rows,
                     "mixed": [None if i % (count + 1) == count else [(f"a{i % (count + 1)}", 1.0)]
                               for i in range(rows)]}
            if rows == 1:
                names["mixed"] = [[("a0", 1.0)]]
            times: dict[str, list[float]] = {"bare": [], "mixed": []}
            for r in range(rounds):
                for mode in ("bare", "mixed") if r % 2 == 0 else ("mixed", "bare"):
                    c0 = time.process_time()
                    with torch.inference_mode():
                        reft_model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1),
                                   adapter_names=names[mode], use_cache=True, logits_to_keep=1)
                    times[mode].append(time.process_time() - c0)
            med = {m: statistics.median(v) for m, v in times.items()}
            out[str(rows)] = {"cpu_s": med, "mixed / bare": med["mixed"] / med["bare"], "all": times}
    finally:
        torch.set_num_threads(threads)
    return out


def prompts(count: int) -> list[str]:
    from extraction_task import make_task

    _, heldout = make_task(seed=0, n_train=8, n_heldout=count)
    return [ex["prompt"] for ex in heldout]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A ``reft serve`` subprocess on a free loopback port."""

    def __init__(self, mode: str, adapters: list[Path], threads: int, log_dir: Path) -> None:
        self.mode, self.port = mode, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "reft.cli.main", "serve", "--port", str(self.port), "--threads", str(threads),
               "--batching", BATCHING[mode], "--max-batch", "64", "--max-queue", "512", "--log-level", "warning"]
        for i, path in enumerate(adapters):
            cmd += ["--adapter", f"a{i}={path}"]
        env = os.environ | {"PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.log = open(log_dir / f"server-{mode}.log", "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def wait(self, limit: float = 300) -> None:
        import httpx2

        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server {self.mode} exited ({self.proc.returncode}); see {self.log.name}")
            try:
                if httpx2.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx2.TransportError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"server {self.mode} did not start")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mib(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def machine_busy_seconds() -> float:
    """CPU seconds all processes of this machine have used (``/proc/stat``: everything but idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in [0, 100]); with few samples p99 is the largest."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


async def load(url: str, models: list[str], texts: list[str], clients: int, total: int, new_tokens: int,
               limit_s: float, server: Server | None = None) -> dict:
    """``clients`` closed-loop streaming clients send ``total`` requests (request i: ``models[i % len]``).

    The client is httpx2 (the transport of the openai client) with a hand-rolled SSE reader: light, so that the load
    generator, which shares the CPUs with the server, takes as little of them as it can.
    """
    import httpx2

    limits = httpx2.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    http = httpx2.AsyncClient(base_url=url, timeout=900, limits=limits)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)
    records: list[dict] = []
    cpu0 = server.cpu_seconds() if server else None
    busy0, own0 = machine_busy_seconds(), own_cpu_seconds()
    t_start = time.perf_counter()

    async def one(i: int) -> dict:
        model = models[i % len(models)]
        body = {"model": model, "messages": [{"role": "user", "content": texts[i % len(texts)]}],
                "max_tokens": new_tokens, "temperature": 0, "stream": True, "stream_options": {"include_usage": True},
                "ignore_eos": True}
        sent = time.perf_counter()
        first, tokens, error = None, 0, None
        try:
            async with http.stream("POST", "/v1/chat/completions", json=body) as r:
                if r.status_code != 200:
                    raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
                async for line in r.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        raise RuntimeError(chunk["error"]["message"])
                    if chunk.get("usage"):
                        tokens = chunk["usage"]["completion_tokens"]
                    choices = chunk.get("choices") or []
                    if first is None and choices and (choices[0]["delta"].get("content") or
                                                      choices[0].get("finish_reason")):
                        first = time.perf_counter()
            if tokens != new_tokens:
                error = f"{tokens} tokens"
        except Exception as e:  # counted as failed, reported
            error = f"{type(e).__name__}: {e}"
        end = time.perf_counter()
        return {"i": i, "model": model, "ok": error is None, "error": error, "tokens": tokens, "sent": sent - t_start,
                "ttft": (first or end) - sent, "latency": end - sent}

    async def worker():
        while time.perf_counter() - t_start < limit_s:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            records.append(await one(i))

    await asyncio.gather(*(worker() for _ in range(clients)))
    wall = time.perf_counter() - t_start
    cpu = server.cpu_seconds() - cpu0 if server else None
    own = own_cpu_seconds() - own0
    other = machine_busy_seconds() - busy0 - own - (cpu or 0.0)
    await http.aclose()
    good = [r for r in records if r["ok"]]
    return {
        "clients": clients, "requests": len(records), "failed": len(records) - len(good), "wall_s": wall,
        "tokens": sum(r["tokens"] for r in good), "throughput_tok_s": sum(r["tokens"] for r in good) / wall,
        # the server's CPU seconds per wall second: near --threads when nothing else competed for the CPUs
        "server_cpu_per_s": cpu / wall if cpu is not None else None,
        "client_cpu_per_s": own / wall,
        # CPU seconds per second that other processes of the machine took meanwhile (other users of a shared box)
        "other_cpu_per_s": other / wall,
        "ttft_p50_s": percentile([r["ttft"] for r in good], 50) if good else None,
        "ttft_p99_s": percentile([r["ttft"] for r in good], 99) if good else None,
        "latency_p50_s": percentile([r["latency"] for r in good], 50) if good else None,
        "latency_p99_s": percentile([r["latency"] for r in good], 99) if good else None,
        "errors": sorted({r["error"] for r in records if r["error"]})[:5], "records": records,
    }


def resident_phase(server: Server, adapters: list[Path], count: int, texts: list[str], new_tokens: int,
                   limit_s: float, memory: dict) -> dict:
    """Load ``count`` more adapters at run time; per-load time, memory per adapter; then a 16-client run over 64."""
    import httpx2

    rss0 = server.rss_mib()
    times = []
    with httpx2.Client(timeout=60) as http:
        for k in range(count):
            t0 = time.perf_counter()
            r = http.post(server.url + "/v1/load_adapter",
                          json={"adapter_name": f"r{k}", "adapter_path": str(adapters[k % len(adapters)])})
            times.append(time.perf_counter() - t0)
            if r.status_code != 200:
                raise RuntimeError(f"load_adapter r{k}: {r.status_code} {r.text}")
        server_side = [m.get("reft", {}).get("parameters") for m in http.get(server.url + "/v1/models").json()["data"]]
    rss1 = server.rss_mib()
    per_adapter_mib = memory["rss_kib_per_adapter"] / 1024  # measured in-process (the server's RSS moves with its KV)
    models = [f"r{k}" for k in range(0, count, max(1, count // 64))][:64] + ["__base__"]
    run = asyncio.run(load(server.url, models, texts, 16, 3 * len(models), new_tokens, limit_s, server))
    total_gib = 24.0
    from transformers import AutoConfig

    from reft.harness.models import smollm2_path

    cfg = AutoConfig.from_pretrained(smollm2_path())
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_gib = 65536 * cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * head_dim * 4 / 2**30  # --max-batch-tokens
    return {
        "loaded": count, "load_s_p50": statistics.median(times), "load_s_p99": percentile(times, 99),
        "load_s_mean": statistics.fmean(times), "rss_before_mib": rss0, "rss_after_mib": rss1,
        "per_adapter_kib": 1024 * per_adapter_mib, "adapter_parameters": server_side[1], "memory": memory,
        "kv_budget_gib": kv_gib,  # what the server may hold in KV cache at its default --max-batch-tokens
        "fit_in_24_gib": int(((total_gib - kv_gib) * 1024 - rss1) / per_adapter_mib) + count
        if per_adapter_mib > 0 else None,
        "run_16_clients_over_64_adapters": {k: v for k, v in run.items() if k != "records"},
    }


def table(result: dict) -> str:
    rows = ["| clients | mode | requests | failed | tok/s | TTFT p50 / p99 (s) | latency p50 / p99 (s) | server CPU/s "
            "| others' CPU/s |",
            "|---|---|---|---|---|---|---|---|---|"]
    for run in result["runs"]:
        mark = "" if run.get("used") else " (not used: disturbed)"
        rows.append(f"| {run['clients']} | {run['mode']}{mark} | {run['requests']} | {run['failed']} | "
                    f"{run['throughput_tok_s']:.1f} | {run['ttft_p50_s']:.2f} / {run['ttft_p99_s']:.2f} | "
                    f"{run['latency_p50_s']:.2f} / {run['latency_p99_s']:.2f} | {run['server_cpu_per_s']:.2f} | "
                    f"{run['other_cpu_per_s']:.2f} |")
    rows += ["", "| clients | mixed ÷ bare (≥ 0.95) | mixed ÷ grouped (≥ 3 at 16+) | mixed ÷ subbatch |",
             "|---|---|---|---|"]
    for n, r in result["ratios"].items():
        rows.append(f"| {n} | {r['mixed / bare']:.3f} | {r['mixed / grouped']:.2f} | {r['mixed / subbatch']:.2f} |")
    pre = result.get("prefill_cpu")
    if pre:
        rows += ["", "Prefill CPU time (the one call where mixed and bare differ; 1 thread, medians): " + "; ".join(
            f"{k} prompt(s) mixed {v['cpu_s']['mixed']:.3f} s vs bare {v['cpu_s']['bare']:.3f} s "
            f"(÷ {v['mixed / bare']:.3f})" for k, v in pre.items() if k != "adapter_memory") + "."]
    res = result.get("resident")
    if res and res.get("fit_in_24_gib"):
        run = res["run_16_clients_over_64_adapters"]
        rows += ["", f"Resident: {res['loaded']} adapters loaded at run time, {res['load_s_p50'] * 1000:.1f} ms per "
                     f"load (p50; p99 {res['load_s_p99'] * 1000:.1f} ms), {res['per_adapter_kib']:.0f} KiB of server "
                     f"memory each → about {res['fit_in_24_gib']:,} fit in 24 GiB; 16 clients over 64 of them: "
                     f"{run['throughput_tok_s']:.1f} tok/s, {run['failed']} failed."]
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", default="1,4,16,64")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads of each server (default: %(default)s: steadiest on a shared 2-core box, and a "
                         "2-thread server used 1.04 CPU/s at 1-4 clients anyway)")
    ap.add_argument("--run-limit", type=float, default=45.0, help="seconds one run may issue requests for")
    ap.add_argument("--resident", type=int, default=1000, help="adapters to load at run time (0: skip)")
    ap.add_argument("--repeats", type=int, default=2, choices=[1, 2], help="runs of mixed and bare per client count")
    ap.add_argument("--disturbed", type=float, default=1.2,
                    help="a run during which other processes took more CPU seconds per second than this is measured "
                         "again, up to twice (default: %(default)s)")
    ap.add_argument("--budget", type=float, default=600.0, help="no re-measuring after this many seconds")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve_load.json"))
    args = ap.parse_args()
    # SIGTERM (and SIGINT, which a shell's background job ignores) end the run through `finally`: servers stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    clients = [int(x) for x in args.clients.split(",")]
    modes = args.modes.split(",")
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="reft-serve-load-"))
    adapters, prefill = make_adapters(work, ADAPTERS)
    print("prefill CPU s, mixed vs bare: " + ", ".join(f"{k} row(s): {v['cpu_s']['mixed']:.3f} vs "
                                                       f"{v['cpu_s']['bare']:.3f}" for k, v in prefill.items()
                                                       if k != "adapter_memory"), prefill["adapter_memory"])
    texts = prompts(64)
    from transformers import AutoTokenizer

    from reft.harness.models import smollm2_path

    tok = AutoTokenizer.from_pretrained(smollm2_path())
    lengths = [len(tok(tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True,
                                               tokenize=False), add_special_tokens=False)["input_ids"])
               for t in texts]
    # "bare" runs on the mixed server (all its requests name the base model): same process, same warm state
    by_batching = {b: Server(b, adapters, args.threads, work) for b in dict.fromkeys(BATCHING[m] for m in modes)}
    servers = {m: by_batching[BATCHING[m]] for m in modes}
    runs = []
    try:
        for srv in by_batching.values():
            srv.wait()
        mixed_models = [f"a{i}" for i in range(ADAPTERS)] + ["__base__"]
        for srv in by_batching.values():  # warm-up: one request per model
            asyncio.run(load(srv.url, mixed_models, texts, 3, 9, 4, 120))

        def measure(n: int, mode: str, attempt: int) -> dict:
            models = ["__base__"] if mode == "bare" else mixed_models
            run = asyncio.run(load(servers[mode].url, models, texts, n, REQUESTS.get(n, 2 * n), args.new_tokens,
                                   args.run_limit, servers[mode]))
            run |= {"mode": mode, "attempt": attempt, "disturbed": run["other_cpu_per_s"] > args.disturbed}
            runs.append(run)
            print(f"{n:>3} clients {mode:<9} {run['requests']:>4} req {run['failed']} failed "
                  f"{run['throughput_tok_s']:7.1f} tok/s  TTFT p50 {run['ttft_p50_s']:.2f}s  "
                  f"latency p50 {run['latency_p50_s']:.2f}s p99 {run['latency_p99_s']:.2f}s  "
                  f"server CPU {run['server_cpu_per_s']:.2f}/s, others {run['other_cpu_per_s']:.2f}/s"
                  f"{' (disturbed)' if run['disturbed'] else ''}  ({time.perf_counter() - t0:.0f}s)", flush=True)
            return run

        for k, n in enumerate(clients):
            order = modes[k % len(modes):] + modes[:k % len(modes)]
            # mixed and bare, whose ratio has the tightest target, run twice, in mirrored order (A B … B A)
            if args.repeats == 2:
                order += [m for m in reversed(order) if m in ("mixed", "bare")]
            for mode in order:
                run, attempt = measure(n, mode, 0), 0
                # another user of the machine took CPU meanwhile: measure again (bounded by the time budget)
                while run["disturbed"] and attempt < 2 and time.perf_counter() - t0 < args.budget:
                    attempt += 1
                    run = measure(n, mode, attempt)
        resident = None
        if args.resident and "mixed" in servers:
            resident = resident_phase(servers["mixed"], adapters, args.resident, texts, args.new_tokens,
                                      args.run_limit, prefill["adapter_memory"])
            print(json.dumps({k: v for k, v in resident.items()}, indent=1), flush=True)
    finally:
        for srv in by_batching.values():
            srv.stop()
        shutil.rmtree(work, ignore_errors=True)
    ratios = {}
    for n in clients:
        tps = {}
        for m in MODES:  # over the undisturbed runs (else the least disturbed): all tokens ÷ all wall time
            same = [r for r in runs if r["clients"] == n and r["mode"] == m]
            used = [r for r in same if not r["disturbed"]] or sorted(same, key=lambda r: r["other_cpu_per_s"])[:1]
            for r in used:
                r["used"] = True
            tps[m] = sum(r["tokens"] for r in used) / sum(r["wall_s"] for r in used) if used else float("nan")
        ratios[str(n)] = {"mixed / bare": tps["mixed"] / tps["bare"], "mixed / grouped": tps["mixed"] / tps["grouped"],
                          "mixed / subbatch": tps["mixed"] / tps["subbatch"], "tokens_per_s": tps}
    import httpx2
    import torch
    import transformers

    result = {
        "model": "SmolLM2-135M-Instruct fp32 (CPU)", "threads_per_server": args.threads, "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(), "adapters": ADAPTERS, "adapter_config": CONFIG,
        "prompt_tokens_mean": statistics.fmean(lengths), "prompt_tokens_range": [min(lengths), max(lengths)],
        "new_tokens": args.new_tokens, "requests_per_run": {str(n): REQUESTS.get(n, 2 * n) for n in clients},
        "run_limit_s": args.run_limit, "failed_total": sum(r["failed"] for r in runs),
        "ratios": ratios, "prefill_cpu": prefill, "resident": resident, "wall_s": time.perf_counter() - t0,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "httpx2": httpx2.__version__, "python": platform.python_version()},
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "runs": runs,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(table(result) + "\n")
    print(table(result))
    print(f"wrote {out} and {out.with_suffix('.md')} ({result['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
