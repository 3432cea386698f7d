"""What the prompt processor measures, for ``/metrics``."""

from __future__ import annotations

from schemas import Usage
from topics.metrics import Registry


class PromptMetrics:
    """Tokens, cost, cache hits, rate-limit waiting and model errors."""

    def __init__(self, registry: Registry) -> None:
        self.tokens = registry.counter(
            "promptmill_tokens_total", "Tokens used, by model and kind.", ("model", "kind")
        )
        self.cost = registry.counter("promptmill_cost_usd_total", "Cost in USD.", ("model",))
        self.cache_hits = registry.counter(
            "promptmill_cache_hits_total", "Answers from the cache or a shared in-flight call."
        )
        self.rate_limit_wait = registry.counter(
            "promptmill_rate_limit_wait_seconds_total", "Time jobs waited for the rate limits."
        )
        self.model_errors = registry.counter(
            "promptmill_model_errors_total",
            "Model calls that failed for good, by error code.",
            ("code",),
        )
        self.failovers = registry.counter(
            "promptmill_model_failovers_total",
            "Calls a catalog deployment failed for good and the next one of its group took.",
            ("group", "deployment"),
        )
        self.routed = registry.counter(
            "promptmill_model_routed_total",
            "Answers by the catalog deployment that gave them.",
            ("group", "deployment"),
        )

    def completed(self, model: str, usage: Usage, cost: float, cached: bool) -> None:
        if cached:
            self.cache_hits.inc()
            return
        self.tokens.inc(usage.prompt_tokens, model=model, kind="prompt")
        self.tokens.inc(usage.completion_tokens, model=model, kind="completion")
        self.cost.inc(cost, model=model)
