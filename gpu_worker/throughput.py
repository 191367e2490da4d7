"""What a worker reports as its speed: aggregate completion tokens per second of busy time.

With continuous batching one request's own rate says little (four sequences at 20 tokens/s each are a
worker doing 80), so the meter divides the tokens of runs that ended in the last `window_s` by the length
of the union of those runs' intervals: time during which at least one run was going. Idle time does not
dilute the figure, and after an idle spell the last measured figure stays. Pure: the clock is passed in.
"""

from __future__ import annotations

from collections import deque


class ThroughputMeter:
    def __init__(self, window_s: float = 30.0) -> None:
        self.window_s = window_s
        self._runs: deque[tuple[float, float, int]] = deque()  # (started_s, ended_s, tokens), by end
        self._last_rate = 0.0

    def record(self, started_s: float, ended_s: float, tokens: int) -> None:
        if tokens > 0 and ended_s > started_s:
            self._runs.append((started_s, ended_s, tokens))

    def tokens_per_s(self, now_s: float) -> float:
        while self._runs and self._runs[0][1] < now_s - self.window_s:
            self._runs.popleft()
        if self._runs:
            tokens = sum(run[2] for run in self._runs)
            self._last_rate = tokens / busy_s([(run[0], run[1]) for run in self._runs])
        return self._last_rate


def busy_s(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end] intervals."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end <= reach:
            continue
        total += end - max(start, reach)
        reach = end
    return total
