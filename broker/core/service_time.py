"""How long an answer takes, learned from what workers report, as a function of its cost.

Answers are grouped by size (powers of two of their cost as the queue holds it: `Iris-Tokens`, or the
estimate of their prompt and completion tokens, so that the work ahead, summed in the same units, is priced
by what answers estimated alike really took); each group keeps a moving average of its size and engine time
(`run_ms` on `LeaseDone`), and the time of an answer of any size is read off the line through the groups'
points: interpolated between them, proportional to tokens beyond the smallest and the largest (a slope
between two noisy, nearby groups is never extrapolated). So a burst of tiny requests, whose time is mostly
fixed cost, refreshes only its own group instead of teaching the broker that every token costs that much
(which would price long answers far too high), and a long run of one size cannot erase what other sizes
showed. The times are the engine's own (no queueing or transport), so an estimate built on them errs on the
side of accepting a request. Pure.
"""

from __future__ import annotations

import bisect

ALPHA = 0.2  # weight of a new answer in its group's moving average


class ServiceTime:
    def __init__(self) -> None:
        self._groups: dict[int, tuple[float, float]] = {}  # log2 of tokens → (mean tokens, mean ms)

    def learn(self, tokens: int, run_ms: float) -> None:
        group = max(1, tokens).bit_length()
        old = self._groups.get(group)
        if old is None:
            self._groups[group] = (float(max(1, tokens)), run_ms)
        else:
            self._groups[group] = (old[0] + ALPHA * (tokens - old[0]), old[1] + ALPHA * (run_ms - old[1]))

    @property
    def known(self) -> bool:
        return bool(self._groups)

    def answer_ms(self, tokens: float) -> float:
        """Engine time of one answer of `tokens`."""
        points = [self._groups[g] for g in sorted(self._groups)]
        xs = [x for x, _ in points]
        i = bisect.bisect_left(xs, tokens)
        if i == 0 or i == len(points):
            x, y = points[0] if i == 0 else points[-1]
            return y * tokens / x
        (x0, y0), (x1, y1) = points[i - 1], points[i]
        return y0 + (y1 - y0) * (tokens - x0) / (x1 - x0) if x1 > x0 else max(y0, y1)

    def ms(self, requests: float, tokens: float) -> float:
        """Engine time of `requests` answers of `tokens` in all, one after another (each taken at their
        mean size)."""
        if requests <= 0 or tokens <= 0:
            return 0.0
        return requests * self.answer_ms(tokens / requests)
