"""What the broker tells `iris top`: per (model, workload) queue, running, share of tokens served vs its
target share, and recent queue-wait percentiles, over a sliding window; plus the last rejections.

Pure and clock-driven: events go in with their time, `snapshot` reads the window at a given time. The
target share of a workload is its weight over the summed weights of the model's busy workloads (queued or
running), which is what weighted-fair queuing converges to while all of them stay busy.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from broker.core.pool import ModelPool
from schemas.messages import BrokerStats, RejectionNote, WorkloadStats

Flow = tuple[str, str]  # (model, workload)


@dataclass
class _FlowWindow:
    waits: deque[tuple[int, int]] = field(default_factory=deque)  # (started at ms, waited ms)
    tokens: deque[tuple[int, int]] = field(default_factory=deque)  # (finished at ms, tokens)
    tokens_sum: int = 0

    def trim(self, cutoff_ms: int) -> None:
        while self.waits and self.waits[0][0] < cutoff_ms:
            self.waits.popleft()
        while self.tokens and self.tokens[0][0] < cutoff_ms:
            self.tokens_sum -= self.tokens.popleft()[1]


def percentile(sorted_values: list[int], q: float) -> int:
    if not sorted_values:
        return 0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


class StatsWindow:
    def __init__(self, window_s: float = 60.0, max_rejections: int = 20) -> None:
        self.window_ms = int(window_s * 1000)
        self.flows: dict[Flow, _FlowWindow] = {}
        self.rejections: deque[RejectionNote] = deque(maxlen=max_rejections)

    def _flow(self, model: str, workload: str) -> _FlowWindow:
        return self.flows.setdefault((model, workload), _FlowWindow())

    def started(self, model: str, workload: str, waited_ms: int, now_ms: int) -> None:
        self._flow(model, workload).waits.append((now_ms, max(0, waited_ms)))

    def served(self, model: str, workload: str, tokens: int, now_ms: int) -> None:
        flow = self._flow(model, workload)
        flow.tokens.append((now_ms, tokens))
        flow.tokens_sum += tokens

    def rejected(self, model: str, workload: str, code: str, message: str, now_ms: int) -> None:
        self._flow(model, workload)
        self.rejections.append(RejectionNote(now_ms, model, workload, code, message[:200]))

    def snapshot(
        self,
        now_ms: int,
        load: Mapping[Flow, FlowLoad],
        weight: Callable[[str], float],
        *,
        broker_id: str = "",
        policy: str = "wfq",
    ) -> BrokerStats:
        """`load`: (queued, running, priority) per flow now; flows idle for a whole window are dropped."""
        cutoff = now_ms - self.window_ms
        for flow in self.flows.values():
            flow.trim(cutoff)
        names = sorted(set(self.flows) | set(load))
        busy_weight: dict[str, float] = {}
        model_tokens: dict[str, int] = {}
        for model, workload in names:
            queued, running, priority = load.get((model, workload), IDLE)
            if queued or running:
                busy_weight[model] = busy_weight.get(model, 0.0) + weight(workload) * priority
            window = self.flows.get((model, workload))
            model_tokens[model] = model_tokens.get(model, 0) + (window.tokens_sum if window else 0)
        rows = [self._row(flow, load, weight, busy_weight, model_tokens) for flow in names]
        rows = [r for r in rows if r.queued or r.running or r.started or r.share]
        self.flows = {f: w for f, w in self.flows.items() if w.waits or w.tokens or any(load.get(f, IDLE)[:2])}
        return BrokerStats(broker_id, now_ms, policy, self.window_ms / 1000, rows, list(self.rejections))

    def _row(
        self,
        flow: Flow,
        load: Mapping[Flow, FlowLoad],
        weight: Callable[[str], float],
        busy_weight: Mapping[str, float],
        model_tokens: Mapping[str, int],
    ) -> WorkloadStats:
        model, workload = flow
        queued, running, priority = load.get(flow, IDLE)
        window = self.flows.get(flow, _FlowWindow())
        waits = sorted(w for _, w in window.waits)
        busy = busy_weight.get(model, 0.0)
        return WorkloadStats(
            model=model,
            workload=workload,
            queued=queued,
            running=running,
            weight=weight(workload),
            share=round(window.tokens_sum / model_tokens[model], 4) if model_tokens.get(model) else 0.0,
            target_share=round(weight(workload) * priority / busy, 4) if busy and (queued or running) else 0.0,
            wait_p50_s=percentile(waits, 0.50) / 1000,
            wait_p95_s=percentile(waits, 0.95) / 1000,
            started=len(waits),
            priority=priority,
        )


FlowLoad = tuple[int, int, int]  # queued, running, priority
IDLE: FlowLoad = (0, 0, 1)


def flow_load(pools: Mapping[str, ModelPool], flows: Iterable[Flow], workloads: Iterable[str]) -> dict[Flow, FlowLoad]:
    """(queued, running, priority) now per (model, workload), for every workload seen in the window, running,
    or configured; priority is the highest it is serving or has waiting (what multiplies its share)."""
    seen_flows, configured = set(flows), set(workloads)
    load = {}
    for model, pool in pools.items():
        running = Counter(lease.workload for lease in pool.leases.values())
        priority: dict[str, int] = {}
        for lease in pool.leases.values():
            priority[lease.workload] = max(priority.get(lease.workload, 1), lease.priority)
        seen = {w for m, w in seen_flows if m == model}
        for workload in seen | set(running) | configured:
            top = max(priority.get(workload, 1), pool.queue.top_priority(workload))
            load[(model, workload)] = (pool.queue.count(workload), running[workload], top)
    return load
