"""``GET /metrics``: the server's state and counters in Prometheus' text format (names as vLLM's, ``reft:`` prefix).

Read at scrape time from the scheduler and engine (a collector, no bookkeeping on the hot path):

* ``reft:num_requests_running`` / ``reft:num_requests_waiting`` (rows in the running batch / requests queued),
  ``reft:num_adapters_loaded``;
* ``reft:scheduler_prefills_total``, ``reft:scheduler_decode_steps_total``, ``reft:cancelled_rows_total``.

Counted as requests end (one registry per app, so several apps in one process do not mix):

* ``reft:prompt_tokens_total``, ``reft:generation_tokens_total``;
* ``reft:request_success_total{finished_reason}`` (per choice: ``stop``, ``length``);
* ``reft:time_to_first_token_seconds``, ``reft:e2e_request_latency_seconds`` (histograms);
* ``reft:http_requests_total{method, route, status}`` (every response, errors included; ``route`` is the
  route's template, ``unmatched`` for unknown paths).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from .engine import Engine
    from .scheduler import Request, Scheduler

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0)


class _StateCollector:
    def __init__(self, engine: Engine, scheduler: Scheduler) -> None:
        self.engine, self.scheduler = engine, scheduler

    def collect(self) -> Iterator[Metric]:
        s, stats = self.scheduler, self.scheduler.stats
        for name, doc, value in (
                ("reft:num_requests_running", "rows (choices) in the running batch", s.running),
                ("reft:num_requests_waiting", "requests queued for a prefill", s.waiting),
                ("reft:num_adapters_loaded", "adapters the server can run", len(self.engine.adapters))):
            yield GaugeMetricFamily(name, doc, value=value)
        for name, doc, key in (
                ("reft:scheduler_prefills", "prefill passes run", "prefills"),
                ("reft:scheduler_decode_steps", "decode steps run", "decode_steps"),
                ("reft:cancelled_rows", "rows dropped because their client left", "cancelled_rows")):
            yield CounterMetricFamily(name, doc, value=stats.get(key, 0))


class ServeMetrics:
    """The app's Prometheus registry; :meth:`request_done` and :meth:`http_response` feed it."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, engine: Engine, scheduler: Scheduler) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_StateCollector(engine, scheduler))
        r = self.registry
        self.prompt_tokens = Counter("reft:prompt_tokens", "prompt tokens of finished requests", registry=r)
        self.generation_tokens = Counter("reft:generation_tokens", "tokens generated", registry=r)
        self.success = Counter("reft:request_success", "choices finished, by reason", ["finished_reason"],
                               registry=r)
        self.ttft = Histogram("reft:time_to_first_token_seconds", "arrival to first token", registry=r,
                              buckets=_LATENCY_BUCKETS)
        self.e2e = Histogram("reft:e2e_request_latency_seconds", "arrival to the request's end", registry=r,
                             buckets=_LATENCY_BUCKETS)
        self.http = Counter("reft:http_requests", "HTTP responses", ["method", "route", "status"], registry=r)

    def request_done(self, gen: Request, reasons: list[str | None], now: float) -> None:
        """One generation request ended (finished, failed or cancelled): its tokens and latencies."""
        self.prompt_tokens.inc(gen.prompt_tokens)
        self.generation_tokens.inc(gen.completion_tokens)
        for reason in reasons:
            if reason:
                self.success.labels(finished_reason=reason).inc()
        if gen.first_token_time is not None:
            self.ttft.observe(gen.first_token_time - gen.arrival)
        if all(reasons):
            self.e2e.observe(now - gen.arrival)

    def http_response(self, method: str, route: str, status: int) -> None:
        self.http.labels(method=method, route=route, status=str(status)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
