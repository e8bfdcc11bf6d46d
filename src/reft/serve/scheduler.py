"""Continuous batching with mixed ReFT adapters: one thread owns the model; requests join and leave between steps.

Why not transformers' ``ContinuousBatchingManager`` (``generate_batch``, ``transformers serve --continuous-batching``)?
Its packed, paged forward could in principle carry edits at packed positions (``reft``'s hooks already support a
packed row), but nothing of its per-request state reaches the forward: requests are queued as bare token lists,
its scheduler splits long prompts into chunks across steps at offsets that are not exposed, and it may share KV
blocks between requests with a common prefix, which is wrong when their adapters edit that prefix differently.
Sampling is configured once per manager (one seed, ``num_return_sequences`` global, per-request temperature and
top-p only if enabled at start-up), so OpenAI's per-request ``seed`` and ``n`` do not map onto it. Carrying
per-request adapters would mean patching its private batch builder, which has changed shape across 5.x releases.
So this module schedules by hand, on the stock eager/SDPA forward and transformers' ``DynamicCache``:

* new requests are prefilled together as one left-padded batch, each row with its own adapter
  (:meth:`Engine.prefill`), and their caches are merged into the running batch's cache by left-padding along the
  sequence axis (:func:`cache_merge`); each row keeps its own length through its attention mask and position ids;
* every step decodes one token for every running row with the bare model (the edits live in the cache);
* finished, cancelled and timed-out rows are dropped by index, and columns no row attends to any more are cut;
* sampling is per row: greedy, or temperature / top-p with a per-request ``torch.Generator`` when ``seed`` is set.

``policy`` exists for the benchmark's baselines: ``"mixed"`` (the server: one running batch, any adapters),
``"grouped"`` (one adapter's requests at a time, swapped when the batch drains) and ``"subbatch"`` (peft-style:
one sub-batch per adapter, each stepped by its own forward).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..model.compose import Composition
from .engine import Engine, cache_merge, cache_select, cache_trim
from .protocol import TokenLogprob

log = logging.getLogger("reft.serve")
POLICIES = ("mixed", "grouped", "subbatch")


class QueueFull(Exception):
    """The waiting queue is at ``max_queue``: answer 429."""


class ShuttingDown(Exception):
    """The scheduler no longer accepts requests: answer 503."""


@dataclass(frozen=True)
class SamplingParams:
    """Per-request decoding settings (validated by the HTTP layer)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    n: int = 1
    ignore_eos: bool = False
    logprobs: int | None = None  # None: none; k ≥ 0: each token's log-probability and its k most likely rivals


@dataclass
class Event:
    """What the scheduler tells a request: text for one choice, its end, or an error for the whole request.

    ``logprobs``: the tokens consumed since the choice's previous event (when the request asked for them)."""

    index: int = 0
    text: str = ""
    finish_reason: str | None = None
    error: tuple[int, str] | None = None  # (HTTP status, message)
    logprobs: list[TokenLogprob] | None = None


class Sequence:
    """One choice of one prompt: a row of the running batch."""

    def __init__(self, request: Request, index: int, prompt: list[int]) -> None:
        self.request, self.index, self.prompt = request, index, prompt
        self.ids: list[int] = []
        self.finish_reason: str | None = None
        self._prefix = self._read = 0  # incremental detokenisation offsets (into self.ids)
        self.text = ""  # decoded text so far (emitted + held back)
        self.sent = 0  # characters of self.text already emitted
        self.logprobs: list[TokenLogprob] = []  # of tokens not yet handed out in an event
        p = request.params
        self.generator = None
        if p.seed is not None and p.temperature > 0:
            self.generator = torch.Generator(device="cpu").manual_seed((p.seed * 1_000_003 + index) % 2**63)

    def _delta(self, tokenizer) -> str:
        """New text after the last token (held back while it ends inside a multi-byte character)."""
        prefix = tokenizer.decode(self.ids[self._prefix:self._read], skip_special_tokens=True)
        full = tokenizer.decode(self.ids[self._prefix:], skip_special_tokens=True)
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self.ids)
            return full[len(prefix):]
        return ""

    def push(self, token: int, engine: Engine, context: int, logprob: TokenLogprob | None = None) -> Event | None:
        """Take one sampled token; return the text that can be shown now (and the finish reason, if it ended)."""
        p = self.request.params
        self.ids.append(token)
        if token in engine.eos_token_ids and not p.ignore_eos:
            self.finish_reason = "stop"
            return self._flush()
        if logprob is not None:
            self.logprobs.append(logprob)
        self.text += self._delta(engine.tokenizer)
        if p.stop:
            start = max(0, self.sent - max(map(len, p.stop)))
            hits = [i for i in (self.text.find(s, start) for s in p.stop) if i >= 0]
            if hits:
                self.text = self.text[:min(hits)]
                self.finish_reason = "stop"
                return self._flush()
        if len(self.ids) >= p.max_tokens or len(self.prompt) + len(self.ids) >= context:
            self.finish_reason = "length"
            return self._flush()
        # hold back a tail that could still become a stop string
        hold = max((k for s in p.stop for k in range(1, len(s)) if self.text.endswith(s[:k])), default=0)
        upto = len(self.text) - hold
        if upto > self.sent:
            text, self.sent = self.text[self.sent:upto], upto
            return Event(self.index, text, logprobs=self._take_logprobs())
        return None

    def _take_logprobs(self) -> list[TokenLogprob] | None:
        if self.request.params.logprobs is None:
            return None
        taken, self.logprobs = self.logprobs, []
        return taken

    def _flush(self) -> Event:
        text, self.sent = self.text[self.sent:], len(self.text)
        return Event(self.index, text, self.finish_reason, logprobs=self._take_logprobs())


class Request:
    """A completion request: one or more prompts × ``n`` choices, all under one adapter or composition
    (``adapter``: from :meth:`Engine.resolve`; ``None`` = the bare model).

    Created on the event loop; the scheduler thread posts lists of :class:`Event` to :attr:`events` through the loop.
    """

    def __init__(self, request_id: str, adapter: Composition | None, prompts: list[list[int]], params: SamplingParams,
                 *, timeout: float | None = None, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.id, self.adapter, self.prompts, self.params = request_id, adapter, prompts, params
        self.arrival = time.monotonic()
        self.deadline = self.arrival + timeout if timeout else None
        self.loop = loop or asyncio.get_running_loop()
        self.events: asyncio.Queue[list[Event]] = asyncio.Queue()
        self.cancelled = False  # set by the HTTP side (client gone); the scheduler drops the rows
        self.sequences = [Sequence(self, i * params.n + j, prompt) for i, prompt in enumerate(prompts)
                          for j in range(params.n)]
        self.queued_step = 0  # the scheduler's step count when it took the request in
        self.prefill_time: float | None = None
        self.first_token_time: float | None = None
        self.done = False

    @property
    def prompt_tokens(self) -> int:
        return sum(map(len, self.prompts))

    @property
    def completion_tokens(self) -> int:
        return sum(len(s.ids) for s in self.sequences)

    @property
    def rows(self) -> int:
        return len(self.sequences)

    @property
    def reserved(self) -> int:
        """The longest row this request can grow to (prompt + max_tokens)."""
        return max(map(len, self.prompts)) + self.params.max_tokens

    def cancel(self) -> None:
        self.cancelled = True

    def post(self, events: list[Event]) -> None:
        if not events:
            return
        if any(e.error for e in events) or all(s.finish_reason for s in self.sequences):
            self.done = True
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, events)
        except RuntimeError:  # the event loop is gone (shutdown)
            self.cancelled = True

    def fail(self, status: int, message: str) -> None:
        self.post([Event(error=(status, message))])


@dataclass
class Lane:
    """A running batch: rows, their KV cache, mask, next position ids and the token each still has to feed."""

    key: object
    seqs: list[Sequence] = field(default_factory=list)
    cache: Any = None
    mask: torch.Tensor | None = None  # [B, T] long
    positions: torch.Tensor | None = None  # [B]
    last: torch.Tensor | None = None  # [B]

    def __len__(self) -> int:
        return len(self.seqs)

    def width(self) -> int:
        return 0 if self.mask is None else self.mask.shape[1]

    def reserved(self) -> int:
        return max((len(s.prompt) + s.request.params.max_tokens for s in self.seqs), default=0)

    def merge(self, seqs: list[Sequence], cache, mask: torch.Tensor, last: torch.Tensor) -> None:
        positions = mask.sum(1)
        if not self.seqs:
            self.seqs, self.cache, self.mask, self.positions, self.last = seqs, cache, mask, positions, last
            return
        width = max(self.width(), mask.shape[1])
        pad = torch.nn.functional.pad
        cache_merge(self.cache, cache)
        self.mask = torch.cat([pad(self.mask, (width - self.width(), 0)), pad(mask, (width - mask.shape[1], 0))])
        self.positions = torch.cat([self.positions, positions])
        self.last = torch.cat([self.last, last])
        self.seqs = self.seqs + seqs

    def keep(self, index: list[int]) -> None:
        if len(index) == len(self.seqs):
            return
        if not index:
            self.seqs, self.cache, self.mask, self.positions, self.last = [], None, None, None, None
            return
        idx = torch.tensor(index, dtype=torch.long)
        cache_select(self.cache, idx)
        self.seqs = [self.seqs[i] for i in index]
        self.mask, self.positions, self.last = self.mask[idx], self.positions[idx], self.last[idx]
        unused = int(self.mask.any(0).long().argmax())  # leading columns no row attends to
        if unused:
            cache_trim(self.cache, unused)
            self.mask = self.mask[:, unused:]


class Scheduler:
    """The batching loop (a daemon thread) that owns the engine.

    Args:
        engine: the model.
        max_batch: most rows (choices) running at once.
        max_queue: most requests waiting to join; beyond it :meth:`submit` raises :class:`QueueFull`.
        max_batch_tokens: rows × the longest row they may grow to stays under this (bounds KV-cache memory).
        max_prefill_tokens: padded prompt tokens prefilled in one step (bounds the pause of running rows).
        join_ratio, max_wait_steps: while rows are running, waiting requests are prefilled once their rows reach
            ``join_ratio`` × the running rows or the oldest has waited ``max_wait_steps`` decode steps (a prefill of
            a few prompts costs nearly as much per token as one of many, so joiners are gathered a little, as TGI's
            ``waiting_served_ratio`` / ``max_waiting_tokens`` do). With no row running they are prefilled at once.
        policy: ``"mixed"`` (default), or a benchmark baseline (``"grouped"``, ``"subbatch"``).
    """

    def __init__(self, engine: Engine, *, max_batch: int = 64, max_queue: int = 256, max_batch_tokens: int = 65536,
                 max_prefill_tokens: int = 2048, join_ratio: float = 0.125, max_wait_steps: int = 4,
                 policy: str = "mixed") -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown batching policy {policy!r}: choose one of {POLICIES}")
        self.engine = engine
        self.max_batch, self.max_queue = max_batch, max_queue
        self.max_batch_tokens, self.max_prefill_tokens = max_batch_tokens, max_prefill_tokens
        self.policy = policy
        self.join_ratio, self.max_wait_steps = join_ratio, max_wait_steps
        self.context = engine.context_length or 2**31
        self._inbox: collections.deque[Request] = collections.deque()
        self._waiting: collections.deque[Request] = collections.deque()
        self._commands: collections.deque[tuple[Callable[[], Any], asyncio.Future, asyncio.AbstractEventLoop]] = \
            collections.deque()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._queued = 0
        self._joining = 0  # requests taken from the queue whose rows are not in a lane yet (being prefilled)
        self._lanes: dict[object, Lane] = {}
        self._active: object = None  # the running adapter under policy "grouped"
        self._accepting = False
        self._stop = False
        self._thread: threading.Thread | None = None
        self._default_gen = torch.Generator(device="cpu").manual_seed(torch.seed() % 2**63)  # requests with no seed
        self.steps = 0
        self.alive = False
        # counters for /health and the tests: prefill calls, decode steps, the most rows and the most distinct
        # adapters (base counted as one) seen in one decode step, rows dropped because their client went away
        self.stats = {"prefills": 0, "decode_steps": 0, "max_rows": 0, "max_adapters_in_step": 0,
                      "cancelled_rows": 0}

    # ---- control (any thread) ----------------------------------------------------------------------------------
    def start(self) -> None:
        self._accepting, self._stop = True, False
        self._thread = threading.Thread(target=self._run, name="reft-serve-scheduler", daemon=True)
        self._thread.start()
        self.alive = True

    def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting; let running and waiting requests finish for up to ``timeout`` s, then cancel the rest."""
        self._accepting = False
        deadline = time.monotonic() + timeout
        while self.busy and time.monotonic() < deadline and self.alive:
            time.sleep(0.02)
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.alive = False

    @property
    def accepting(self) -> bool:
        return self._accepting and self.alive

    @property
    def running(self) -> int:
        return sum(len(lane) for lane in list(self._lanes.values()))

    @property
    def waiting(self) -> int:
        return self._queued

    @property
    def busy(self) -> bool:
        return bool(self.running or self._queued or self._joining)

    def submit(self, request: Request) -> None:
        """Queue a request (from the event loop). Raises :class:`ShuttingDown` or :class:`QueueFull`."""
        if not self.accepting:
            raise ShuttingDown("the server is shutting down and accepts no new requests: retry on another instance")
        if request.rows > self.max_batch:
            raise ValueError(f"this request needs {request.rows} rows (prompts × n) but the server runs at most "
                             f"{self.max_batch} at once (--max-batch): lower n or send fewer prompts")
        with self._lock:
            if self._queued >= self.max_queue:
                raise QueueFull(f"too many requests: {self._queued} are waiting (--max-queue {self.max_queue}); "
                                "retry later")
            self._queued += 1
        self._inbox.append(request)
        self._wake.set()

    async def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn()`` on the scheduler thread between two steps (adapter loading) and return its result."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._commands.append((fn, future, loop))
        self._wake.set()
        if not self.alive:
            self._run_commands()
        return await future

    # ---- the loop (scheduler thread) ---------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop:
                self._run_commands()
                self._intake()
                if not self.running and not self._waiting:
                    self._wake.wait(0.5)
                    self._wake.clear()
                    continue
                try:
                    self._step()
                except Exception as e:  # keep serving: fail what was running, log, go on
                    log.error("scheduler step failed: %s\n%s", e, traceback.format_exc())
                    for lane in list(self._lanes.values()):
                        for seq in lane.seqs:
                            seq.request.fail(500, f"internal error in the batch step ({type(e).__name__}: {e})")
                    self._lanes.clear()
                self.steps += 1
        finally:
            self._cancel_all("the server shut down before this request finished")
            self._run_commands()
            self.alive = False

    def _run_commands(self) -> None:
        while self._commands:
            fn, future, loop = self._commands.popleft()
            try:
                result, error = fn(), None
            except Exception as e:
                result, error = None, e

            def settle(f=future, r=result, e=error):
                if not f.done():
                    f.set_exception(e) if e is not None else f.set_result(r)

            try:
                loop.call_soon_threadsafe(settle)
            except RuntimeError:
                pass

    def _intake(self) -> None:
        while self._inbox:
            req = self._inbox.popleft()
            req.queued_step = self.steps
            self._waiting.append(req)
        now = time.monotonic()
        kept = collections.deque()
        for req in self._waiting:
            if req.cancelled:
                self._dequeue()
            elif req.deadline is not None and now > req.deadline:
                self._dequeue()
                req.fail(503, f"the request waited {now - req.arrival:.1f} s in the queue and timed out "
                              "(--request-timeout): the server is overloaded; retry later")
            else:
                kept.append(req)
        self._waiting = kept

    def _dequeue(self) -> None:
        with self._lock:
            self._queued -= 1

    def _cancel_all(self, message: str) -> None:
        for lane in self._lanes.values():
            for req in {id(s.request): s.request for s in lane.seqs}.values():
                req.fail(503, message)
        self._lanes.clear()
        while self._inbox:
            self._waiting.append(self._inbox.popleft())
        for req in self._waiting:
            self._dequeue()
            req.fail(503, message)
        self._waiting.clear()

    def _lane_key(self, req: Request) -> object:
        return "*" if self.policy == "mixed" else req.adapter

    def _admit(self) -> dict[object, list[Request]]:
        """Pick waiting requests to prefill this step, per lane (FIFO; bounded by rows, tokens, prefill size)."""
        if not self._waiting:
            return {}
        rows = self.running
        if rows:
            waiting_rows = sum(r.rows for r in self._waiting)
            waited = self.steps - self._waiting[0].queued_step
            if waiting_rows < self.join_ratio * rows and waited < self.max_wait_steps and \
                    rows + waiting_rows < self.max_batch:
                return {}  # gather a few more joiners first
        longest = max((lane.reserved() for lane in self._lanes.values()), default=0)
        if self.policy == "grouped":
            if not any(len(lane) for lane in self._lanes.values()):
                self._active = self._waiting[0].adapter
            elif any(r.adapter != self._active for r in self._waiting):
                return {}  # let the running group drain, then swap
        picked: dict[object, list[Request]] = {}
        prefill_width = prefill_rows = 0
        kept = collections.deque()
        blocked = False
        for req in self._waiting:
            if blocked or (self.policy == "grouped" and req.adapter != self._active):
                kept.append(req)
                continue
            new_longest = max(longest, req.reserved)
            width = max(prefill_width, max(map(len, req.prompts)))
            fits = (rows + req.rows <= self.max_batch
                    and (rows + req.rows) * new_longest <= self.max_batch_tokens
                    and (prefill_rows + len(req.prompts)) * width <= self.max_prefill_tokens)
            if not fits and (rows or prefill_rows):
                blocked = True  # FIFO: no overtaking
                kept.append(req)
                continue
            picked.setdefault(self._lane_key(req), []).append(req)
            rows += req.rows
            longest = new_longest
            prefill_width, prefill_rows = width, prefill_rows + len(req.prompts)
            self._joining += 1  # before it leaves the queue count: `busy` never sees it in neither
            self._dequeue()
        self._waiting = kept
        return picked

    def _step(self) -> None:
        admitted = self._admit()  # counts them in _joining
        try:
            for key, reqs in admitted.items():
                self._prefill(key, reqs)
        finally:
            self._joining = 0
        for lane in list(self._lanes.values()):
            if len(lane):
                self._decode(lane)
        for key in [k for k, lane in self._lanes.items() if not len(lane)]:
            del self._lanes[key]

    def _prefill(self, key: object, reqs: list[Request]) -> None:
        live = []
        for req in reqs:
            gone = self.engine.unavailable(req.adapter)
            if gone is None:
                live.append(req)
            else:
                req.fail(404, f"adapter {gone!r} was unloaded after this request was accepted: GET /v1/models "
                              "lists what is loaded")
        reqs = live
        if not reqs:
            return
        prompts = [(req, p) for req in reqs for p in req.prompts]
        width = max(len(p) for _, p in prompts)
        ids = torch.full((len(prompts), width), self.engine.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, (_, p) in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
        adapters = [req.adapter for req, _ in prompts]
        t0 = time.monotonic()
        try:
            logits, cache = self.engine.prefill(ids, mask, adapters)
        except LookupError as e:
            for req in reqs:
                req.fail(404, str(e))
            return
        self.stats["prefills"] += 1
        repeat = torch.tensor([req.params.n for req, _ in prompts], dtype=torch.long)
        if int(repeat.max()) > 1:
            index = torch.repeat_interleave(torch.arange(len(prompts)), repeat)
            cache_select(cache, index)
            logits, mask = logits[index], mask[index]
        seqs = [s for req in reqs for s in req.sequences]
        for req in reqs:
            req.prefill_time = time.monotonic() - t0
        tokens = self._sample(logits, seqs)
        keep = self._emit(seqs, tokens.tolist(), self._logprobs(logits, seqs, tokens))  # some rows may be done
        if not keep:
            return
        if len(keep) < len(seqs):
            index = torch.tensor(keep, dtype=torch.long)
            cache_select(cache, index)
            seqs, mask, tokens = [seqs[i] for i in keep], mask[index], tokens[index]
        self._lanes.setdefault(key, Lane(key)).merge(seqs, cache, mask, tokens)

    def _decode(self, lane: Lane) -> None:
        mask = torch.cat([lane.mask, torch.ones((len(lane), 1), dtype=lane.mask.dtype)], dim=1)
        logits = self.engine.decode(lane.last[:, None], mask, lane.positions[:, None], lane.cache)
        st = self.stats
        st["decode_steps"] += 1
        st["max_rows"] = max(st["max_rows"], len(lane))
        st["max_adapters_in_step"] = max(st["max_adapters_in_step"], len({s.request.adapter for s in lane.seqs}))
        lane.mask, lane.positions = mask, lane.positions + 1
        tokens = self._sample(logits, lane.seqs)
        lane.last = tokens
        lane.keep(self._emit(lane.seqs, tokens.tolist(), self._logprobs(logits, lane.seqs, tokens)))

    def _emit(self, seqs: list[Sequence], tokens: list[int], logprobs: list[TokenLogprob | None] | None = None
              ) -> list[int]:
        """Hand each row its token (and its log-probability) and post the events per request; return the rows that
        go on (not finished, cancelled or timed out)."""
        now = time.monotonic()
        events: dict[int, tuple[Request, list[Event]]] = {}
        keep = []
        for i, (seq, token) in enumerate(zip(seqs, tokens, strict=True)):
            req = seq.request
            if req.cancelled or req.done:
                self.stats["cancelled_rows"] += req.cancelled and not req.done
                continue
            if req.deadline is not None and now > req.deadline:
                req.fail(504, f"the request timed out after {now - req.arrival:.1f} s (--request-timeout) with "
                              f"{req.completion_tokens} tokens generated: lower max_tokens or raise the timeout")
                continue
            event = seq.push(token, self.engine, self.context, logprobs[i] if logprobs else None)
            if req.first_token_time is None:
                req.first_token_time = now
            if event is not None:
                events.setdefault(id(req), (req, []))[1].append(event)
            if seq.finish_reason is None:
                keep.append(i)
        for req, evs in events.values():
            req.post(evs)
        return keep

    @staticmethod
    def _logprobs(logits: torch.Tensor, seqs: list[Sequence], tokens: torch.Tensor
                  ) -> list[TokenLogprob | None] | None:
        """``log softmax(logits)`` at each row's token and its top-k, for the rows whose request asked; else None.

        ``logits``: ``[rows, vocab]`` as the model gave them (before temperature and top-p, as vLLM reports)."""
        rows = [i for i, s in enumerate(seqs) if s.request.params.logprobs is not None]
        if not rows:
            return None
        idx = torch.tensor(rows, dtype=torch.long)
        lp = logits[idx].float().log_softmax(-1)
        chosen = lp.gather(1, tokens[idx][:, None])[:, 0].tolist()
        k = max(seqs[i].request.params.logprobs for i in rows)
        top_values, top_ids = lp.topk(k, dim=-1) if k else (lp[:, :0], lp[:, :0].long())
        out: list[TokenLogprob | None] = [None] * len(seqs)
        for j, i in enumerate(rows):
            kk = seqs[i].request.params.logprobs
            out[i] = (int(tokens[i]), chosen[j], tuple(zip(top_ids[j, :kk].tolist(), top_values[j, :kk].tolist())))
        return out

    def _sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        """One token per row: greedy where temperature is 0, else temperature + top-p with the row's generator."""
        out = logits.argmax(-1)
        rows = [i for i, s in enumerate(seqs) if s.request.params.temperature > 0]
        if not rows:
            return out
        idx = torch.tensor(rows, dtype=torch.long)
        temps = torch.tensor([seqs[i].request.params.temperature for i in rows], dtype=logits.dtype)
        top_p = torch.tensor([seqs[i].request.params.top_p for i in rows], dtype=logits.dtype)
        scaled = logits[idx] / temps[:, None]
        if bool((top_p < 1).any()):
            ordered, order = scaled.sort(-1, descending=True)
            probs = ordered.softmax(-1)
            drop = probs.cumsum(-1) - probs > top_p[:, None]  # keep the smallest prefix reaching top_p (≥ 1 token)
            scaled = scaled.scatter(-1, order, ordered.masked_fill(drop, float("-inf")))
        probs = scaled.softmax(-1)
        for j, i in enumerate(rows):
            gen = seqs[i].generator or self._default_gen
            out[i] = torch.multinomial(probs[j], 1, generator=gen)[0]
        return out
