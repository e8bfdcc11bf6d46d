"""The batching loop without HTTP: mixed adapters in one running batch give each request its own adapter's answer.

References are ``ReftModel.generate`` / ``model.generate`` on one request alone; greedy tokens must match except at
a near-tie of the reference (see ``assert_same_greedy``). No test depends on timing: waits are on events, bounded.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import torch
from _serve_common import (
    assert_same_greedy,
    build,
    char_tokenizer,
    make_adapter,
    reference,
    reference_composition,
    serve_model,
)

from reft.serve.engine import cache_merge, cache_select, cache_trim
from reft.serve.scheduler import QueueFull, Request, SamplingParams

TOK = char_tokenizer()
PROMPTS = ["the quick brown fox", "hello there, how are you doing today?", "ab", "json: {name: ana, city: lima}"]


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {"a": make_adapter(root / "a", 1), "b": make_adapter(root / "b", 2, positions="l3", layers="0;3"),
            "c": make_adapter(root / "c", 3, positions="f1+l1", layers="2")}


def ids(text: str) -> list[int]:
    return TOK(text)["input_ids"]


def req(rid: str, adapter: str | None, prompt: str, params: SamplingParams, **kw) -> Request:
    """A request for one adapter (``None``: the bare model), as the HTTP layer builds it after ``Engine.resolve``."""
    return Request(rid, None if adapter is None else ((adapter, 1.0),), [ids(prompt)], params, **kw)


async def collect(req: Request, until: int | None = None) -> tuple[list[str], list[str | None]]:
    """Texts and finish reasons of ``req`` (or return after ``until`` events of choice 0)."""
    texts, reasons = [""] * req.rows, [None] * req.rows
    seen = 0
    while not all(reasons):
        events = await asyncio.wait_for(req.events.get(), 60)
        for e in events:
            if e.error:
                raise RuntimeError(e.error)
            texts[e.index] += e.text
            reasons[e.index] = e.finish_reason or reasons[e.index]
            seen += e.index == 0
        if until is not None and seen >= until:
            break
    return texts, reasons

def run_all(sched, make_requests) -> list[Request]:
    """Start the scheduler, submit every request ``make_requests()`` builds, wait for all of them, stop."""

    async def main():
        sched.start()
        reqs = make_requests()
        for r in reqs:
            sched.submit(r)
        for r in reqs:
            await collect(r)
        sched.stop(1)
        return reqs

    return run(main())


def greedy(max_tokens: int, **kw) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, **kw)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


def test_cache_surgery_matches_separate_rows():
    """Merging two prefilled batches (left-padding the shorter), dropping and trimming rows keeps every row exact."""
    engine = build()[1]
    a, b = ids("hello there, friend"), ids("abc")

    def prefill(rows):
        width = max(map(len, rows))
        x = torch.zeros(len(rows), width, dtype=torch.long)
        m = torch.zeros_like(x)
        for i, r in enumerate(rows):
            x[i, width - len(r):], m[i, width - len(r):] = torch.tensor(r), 1
        logits, cache = engine.prefill(x, m, [None] * len(rows))
        return logits, cache, m

    def steps(logits, cache, mask, feed=None, n=70):  # 70: past the spare columns of the cache buffers (they grow)
        """Decode ``n`` steps (greedy, or feeding the ``[B, n]`` tokens ``feed``); logits ``[B, n, V]`` and tokens."""
        out, fed, last, pos = [], [], logits.argmax(-1), mask.sum(1)
        for k in range(n):
            last = last if feed is None else feed[:, k]
            fed.append(last)
            mask = torch.cat([mask, torch.ones(len(mask), 1, dtype=mask.dtype)], 1)
            logits = engine.decode(last[:, None], mask, pos[:, None], cache)
            out.append(logits)
            last, pos = logits.argmax(-1), pos + 1
        return torch.stack(out, 1), torch.stack(fed, 1), mask

    la, ca, ma = prefill([a])
    lb, cb, mb = prefill([b])
    alone_a, fed_a, _ = steps(la, ca, ma)
    alone_b, fed_b, _ = steps(lb, cb, mb)
    la, ca, ma = prefill([a])
    lb, cb, mb = prefill([b])
    cache_merge(ca, cb)
    mask = torch.cat([ma, torch.nn.functional.pad(mb, (ma.shape[1] - mb.shape[1], 0))])
    together, _, mask = steps(torch.cat([la, lb]), ca, mask, feed=torch.cat([fed_a, fed_b]))
    scale = float(alone_a.abs().max())
    torch.testing.assert_close(together[0], alone_a[0], rtol=1e-4, atol=1e-5 * scale)
    torch.testing.assert_close(together[1], alone_b[0], rtol=1e-4, atol=1e-5 * scale)
    # drop row 0, cut the columns only it attended to: row 1 goes on as if alone
    cache_select(ca, torch.tensor([1]))
    mask = mask[1:]
    unused = int(mask.any(0).long().argmax())
    assert unused == len(a) - len(b)
    cache_trim(ca, unused)
    assert ca.get_seq_length() == mask.shape[1] - unused


def test_mixed_adapters_in_one_batch_match_each_alone(adapters):
    """Base, three adapters and a composition, submitted together, run as one batch; each row answers as its adapter
    does alone."""
    _, engine, sched = build(adapters)
    jobs = [(None, PROMPTS[0]), ("a", PROMPTS[0]), ("b", PROMPTS[0]), ("c", PROMPTS[1]), ("a", PROMPTS[2]),
            (None, PROMPTS[3]), ("a-c", PROMPTS[0])]

    reqs = run_all(sched, lambda: [Request(f"r{i}", engine.resolve(ad), [ids(p)], greedy(24))
                                   for i, (ad, p) in enumerate(jobs)])
    assert sched.stats["max_adapters_in_step"] == 5  # base, a, b, c and a-c decoded together
    assert sched.stats["prefills"] == 1
    answers = set()
    for (ad, p), r in zip(jobs, reqs):
        if ad is not None and "-" in ad:
            want, gaps = reference_composition(ad, adapters, ids(p), 24)
        else:
            want, gaps = reference(serve_model(), TOK, ids(p), 24, adapters.get(ad))
        assert_same_greedy(r.sequences[0].ids, want, gaps)
        answers.add((p, TOK.decode(want)))
    assert len(answers) == len(jobs)  # every adapter changes the answer (the test would be vacuous otherwise)


def test_requests_join_the_running_batch(adapters):
    """A request arriving while another runs joins between decode steps, with its own adapter; both stay exact."""
    _, engine, sched = build(adapters)
    first_want, first_gaps = reference(serve_model(), TOK, ids(PROMPTS[1]), 40, adapters["a"])
    assert len(first_want) == 40  # precondition: it runs long enough to be joined

    async def main():
        sched.start()
        first = req("first", "a", PROMPTS[1], greedy(40))
        sched.submit(first)
        await collect(first, until=5)
        late = [req("late-b", "b", PROMPTS[0], greedy(10)), req("late-base", None, "ab", greedy(10))]
        for r in late:
            sched.submit(r)
        await collect(late[0], until=1)
        joined_while_running = not first.done
        for r in late:
            await collect(r)
        await collect(first)
        sched.stop(1)
        return first, late, joined_while_running

    first, late, joined = run(main())
    assert joined and sched.stats["max_rows"] == 3 and sched.stats["prefills"] == 2
    assert_same_greedy(first.sequences[0].ids, first_want, first_gaps)
    for r, ad, p in zip(late, ["b", None], [PROMPTS[0], "ab"]):
        want, gaps = reference(serve_model(), TOK, ids(p), 10, adapters.get(ad))
        assert_same_greedy(r.sequences[0].ids, want, gaps)


def test_seed_reproduces_and_n_gives_distinct_choices(adapters):
    _, _, sched = build(adapters)
    params = SamplingParams(max_tokens=16, temperature=1.0, seed=7, n=3)

    async def main():
        sched.start()
        out = []
        for seed in (7, 7, 8):
            r = req(f"s{seed}", "a", PROMPTS[0], SamplingParams(**{**params.__dict__, "seed": seed}))
            sched.submit(r)
            out.append(await collect(r))
        sched.stop(1)
        return out

    (t1, _), (t2, _), (t3, _) = run(main())
    assert t1 == t2  # same seed, same answer
    assert len(set(t1)) == 3  # the n choices sample independently
    assert t3 != t1


def test_tiny_top_p_is_greedy(adapters):
    _, _, sched = build(adapters)

    async def main():
        sched.start()
        r = req("p", "b", PROMPTS[3], SamplingParams(max_tokens=12, temperature=1.5, top_p=1e-6))
        sched.submit(r)
        await collect(r)
        sched.stop(1)
        return r

    r = run(main())
    want, gaps = reference(serve_model(), TOK, ids(PROMPTS[3]), 12, adapters["b"])
    assert_same_greedy(r.sequences[0].ids, want, gaps)


def test_stop_string_cuts_and_is_never_streamed(adapters):
    want, _ = reference(serve_model(), TOK, ids(PROMPTS[1]), 30, adapters["c"])
    text = TOK.decode(want, skip_special_tokens=True)
    stop = text[6:9]
    cut = text[:text.find(stop)]
    _, _, sched = build(adapters)

    async def main():
        sched.start()
        r = req("stop", "c", PROMPTS[1], greedy(30, stop=(stop, "never-there")))
        sched.submit(r)
        pieces = []
        while not r.done:
            for e in await asyncio.wait_for(r.events.get(), 60):
                pieces.append(e.text)
        sched.stop(1)
        return pieces, r

    pieces, r = run(main())
    assert "".join(pieces) == cut and r.sequences[0].finish_reason == "stop"
    assert not any(stop in p for p in pieces)


def test_cancel_frees_the_slot_and_timeouts_fail_clearly(adapters):
    _, _, sched = build(adapters)

    async def main():
        sched.start()
        long = req("long", "a", PROMPTS[0], greedy(100_000))
        sched.submit(long)
        await collect(long, until=3)
        long.cancel()
        deadline = time.monotonic() + 30
        while sched.running and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        freed = sched.running == 0
        queued = req("queued", None, "ab", greedy(4), timeout=1e-9)  # expired before it is admitted
        sched.submit(queued)
        queued_error = (await asyncio.wait_for(queued.events.get(), 30))[0].error
        running = req("running", None, "ab", greedy(100_000))
        sched.submit(running)
        await collect(running, until=2)
        running.deadline = time.monotonic() - 1  # expires while it runs
        running_error = None
        while running_error is None:
            running_error = next((e.error for e in await asyncio.wait_for(running.events.get(), 30) if e.error), None)
        sched.stop(1)
        return freed, queued_error, running_error

    freed, queued_error, running_error = run(main())
    assert freed
    assert queued_error[0] == 503 and "queue" in queued_error[1]
    assert running_error[0] == 504 and "timed out" in running_error[1]


def test_queue_bound_and_unloaded_adapter(adapters):
    _, engine, sched = build(adapters, max_batch=1, max_queue=1)

    async def main():
        sched.start()
        running = req("running", None, "ab", greedy(100_000))
        sched.submit(running)
        await collect(running, until=1)
        waiting = req("waiting", None, "ab", greedy(2))
        sched.submit(waiting)  # max_batch=1: it waits
        with pytest.raises(QueueFull, match="too many requests"):
            sched.submit(req("refused", None, "ab", greedy(2)))
        running.cancel()
        await collect(waiting)
        await sched.call(lambda: engine.unload_adapter("c"))
        stale = req("stale", "c", "ab", greedy(2))  # accepted before the unload, admitted after
        sched.submit(stale)
        error = (await asyncio.wait_for(stale.events.get(), 30))[0].error
        sched.stop(1)
        return error

    error = run(main())
    assert error[0] == 404 and "'c'" in error[1]


@pytest.mark.parametrize("policy", ["grouped", "subbatch"])
def test_baseline_policies_give_the_same_answers(adapters, policy):
    """The benchmark's baselines (one adapter at a time; one sub-batch per adapter) compute the same tokens."""
    _, _, sched = build(adapters, policy=policy)
    jobs = [("a", PROMPTS[0]), ("b", PROMPTS[1]), (None, PROMPTS[0]), ("a", PROMPTS[3])]

    reqs = run_all(sched, lambda: [req(f"r{i}", ad, p, greedy(12)) for i, (ad, p) in enumerate(jobs)])
    assert sched.stats["max_adapters_in_step"] == 1
    for (ad, p), r in zip(jobs, reqs):
        want, gaps = reference(serve_model(), TOK, ids(p), 12, adapters.get(ad))
        assert_same_greedy(r.sequences[0].ids, want, gaps)


def test_stop_lets_running_requests_finish_then_cancels(adapters):
    _, _, sched = build(adapters)

    async def main():
        sched.start()
        short = req("short", "a", PROMPTS[0], greedy(20))
        sched.submit(short)
        await collect(short, until=1)
        await asyncio.to_thread(sched.stop, 60)  # drains: the request finishes
        finished = short.done and short.sequences[0].finish_reason is not None
        return finished

    assert run(main())

    _, _, sched = build(adapters)

    async def cancel():
        sched.start()
        endless = req("endless", "a", PROMPTS[0], greedy(100_000))
        sched.submit(endless)
        await collect(endless, until=1)
        await asyncio.to_thread(sched.stop, 0)  # no grace: cancelled with a clear error
        while True:
            for e in await asyncio.wait_for(endless.events.get(), 30):
                if e.error:
                    return e.error

    status, message = run(cancel())
    assert status == 503 and "shut down" in message
