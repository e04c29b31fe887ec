"""The server's Prometheus metrics (`GET /metrics`), in a registry of its own: each
app has its own counters (tests start several), and nothing else's are mixed in."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Seconds: emu's first tokens take 0.05 s (a cached prompt) to tens of seconds (a
# 2048-token prefill); an NPU's are 10x shorter.
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)
TPOT_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5, 1)


class Metrics:
    def __init__(self, queue_depth: Callable[[], int]):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "aierun_requests", "HTTP requests answered", ["endpoint", "status"], registry=r
        )
        self.prompt_tokens = Counter("aierun_prompt_tokens", "prompt tokens", registry=r)
        self.generated_tokens = Counter("aierun_generated_tokens", "tokens generated", registry=r)
        self.cache_hits = Counter(
            "aierun_prefix_cache_hits", "generations that reused cached positions", registry=r
        )
        self.cached_tokens = Counter(
            "aierun_prefix_cached_tokens", "prompt tokens not computed again", registry=r
        )
        self.cancelled = Counter(
            "aierun_generations_cancelled", "generations stopped by a client leaving", registry=r
        )
        self.ttft = Histogram(
            "aierun_time_to_first_token_seconds",
            "from a request being queued to its first token",
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "aierun_time_per_output_token_seconds",
            "mean time per token after the first, per generation",
            buckets=TPOT_BUCKETS,
            registry=r,
        )
        depth = Gauge("aierun_queue_depth", "generations queued or running", registry=r)
        depth.set_function(queue_depth)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
