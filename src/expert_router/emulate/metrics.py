"""Prometheus metrics under vLLM's names, so anything that reads a vLLM server's load reads ours.

One registry per emulated engine: a process serving eight engines on eight ports shows each port its
own engine, as eight vLLM servers would. Durations are emulated GPU time (wall time divided by the
time-dilation factor), so histograms read the same whatever k a run used; `emulator_time_dilation`
says which k that was.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from expert_router.emulate.engine import Engine

LATENCY_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
"""vLLM's time-to-first-token buckets (vllm/engine/metrics.py), used for all three histograms."""


class EngineMetrics:
    def __init__(self, model_name: str, dilation: float):
        self.registry = CollectorRegistry()
        labels = ["model_name"]
        r = self.registry
        self.running = Gauge("vllm:num_requests_running", "Requests in the running batch", labels, registry=r)
        self.waiting = Gauge("vllm:num_requests_waiting", "Requests waiting to be scheduled", labels, registry=r)
        self.kv_usage = Gauge("vllm:kv_cache_usage_perc", "KV-cache blocks in use, 0..1", labels, registry=r)
        self.gpu_cache = Gauge(
            "vllm:gpu_cache_usage_perc", "KV-cache blocks in use, 0..1 (vLLM v0 name)", labels, registry=r
        )
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Prefilled prompt tokens", labels, registry=r)
        self.generation_tokens = Counter("vllm:generation_tokens", "Generated tokens", labels, registry=r)
        self.preemptions = Counter("vllm:num_preemptions", "Sequences preempted", labels, registry=r)
        self.success = Counter("vllm:request_success", "Finished requests", labels + ["finished_reason"], registry=r)
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds", "Time to first token", labels, buckets=LATENCY_BUCKETS, registry=r
        )
        self.tpot = Histogram(
            "vllm:time_per_output_token_seconds",
            "Time between output tokens",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds", "Request latency", labels, buckets=LATENCY_BUCKETS, registry=r
        )
        dilation_gauge = Gauge(
            "emulator_time_dilation", "Every emulated duration runs this many times slower", registry=r
        )
        dilation_gauge.set(dilation)
        self.model_name = model_name
        self._seen = (0, 0, 0)
        # Every series exists from the start, at 0, as vLLM exports them: a scrape before the first
        # request found no `num_requests_running` at all, and a gateway read that as "not reporting".
        for gauge in (self.running, self.waiting, self.kv_usage, self.gpu_cache):
            gauge.labels(model_name).set(0)
        for counter in (self.prompt_tokens, self.generation_tokens, self.preemptions):
            counter.labels(model_name)

    def update(self, engine: Engine) -> None:
        """Copy the engine's state and counters into the metrics (after each step)."""
        name = self.model_name
        self.running.labels(name).set(engine.running)
        self.waiting.labels(name).set(engine.waiting)
        usage = engine.blocks.usage
        self.kv_usage.labels(name).set(usage)
        self.gpu_cache.labels(name).set(usage)
        s = engine.stats
        prompt, generated, preempted = self._seen
        self.prompt_tokens.labels(name).inc(s.prompt_tokens - prompt)
        self.generation_tokens.labels(name).inc(s.generation_tokens - generated)
        self.preemptions.labels(name).inc(s.preemptions - preempted)
        self._seen = (s.prompt_tokens, s.generation_tokens, s.preemptions)

    def finished(self, reason: str, ttft: float, tpot: float | None, e2e: float) -> None:
        name = self.model_name
        self.success.labels(name, reason).inc()
        self.ttft.labels(name).observe(ttft)
        if tpot is not None:
            self.tpot.labels(name).observe(tpot)
        self.e2e.labels(name).observe(e2e)

    def aborted(self) -> None:
        """A request whose client left before its end: vLLM counts it as finished, for reason "abort"."""
        self.success.labels(self.model_name, "abort").inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
