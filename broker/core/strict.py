"""Strict priority bands (`priority_mode = "strict"`): a higher `Iris-Priority` is always served first.

vLLM's and llm-d's behaviour: each priority is a band, a weighted-fair queue of its own (`WfqQueue`: workload
weights, users and end users sharing equally inside the band), and the highest band with a request that may
start now goes first. Against starvation, `min_share` > 0 lets the lower bands take turns too: bands share by
stride, the highest waiting one weighing 1 and every other `min_share`, so each is served at least
`min_share` as fast as the top one. Empty bands leave at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

from broker.core.queue import Eligible, TalliedQueue, Tally, WaitingRequest
from broker.core.stride import StrideLevel
from broker.core.wfq import Labels, WfqQueue


class StrictQueue(TalliedQueue):
    def __init__(
        self,
        weights: Mapping[str, float] | None = None,
        estimate: Callable[[WaitingRequest], int] | None = None,
        min_share: float = 0.0,
    ) -> None:
        self._weights = dict(weights or {})
        self._estimate = estimate
        self.min_share = min_share
        self._bands: dict[int, WfqQueue] = {}
        self._level: StrideLevel[int] = StrideLevel()
        self._band_of: dict[int, int] = {}  # stream sequence → its band
        self._tally = Tally()

    @property
    def weights(self) -> dict[str, float]:
        return self._weights

    @weights.setter
    def weights(self, weights: Mapping[str, float]) -> None:
        self._weights = dict(weights)
        for band in self._bands.values():
            band.weights = dict(weights)

    def push(self, request: WaitingRequest) -> None:
        band = self._bands.get(request.priority)
        if band is None:
            band = self._bands[request.priority] = WfqQueue(self._weights, estimate=self._estimate)
        band.push(request)
        self._band_of[request.stream_seq] = request.priority
        self._level.activate(request.priority)
        self._tally.add(request, 1)

    def _band_weight(self, priority: int) -> float:
        return 1.0 if priority >= max(self._bands) else self.min_share

    def pop(self, eligible: Eligible | None = None) -> WaitingRequest | None:
        priority = self._next_band(eligible)
        if priority is None:
            return None
        band = self._bands[priority]
        request = band.pop(_in_band(eligible))
        assert request is not None
        if self.min_share:
            self._level.charge(priority, band.cost(request), self._band_weight(priority))
        self._taken(request)
        return request

    def _next_band(self, eligible: Eligible | None) -> int | None:
        if eligible is not None and self._tally.none_eligible(eligible, len(self._band_of)):
            return None

        def ok(p: int) -> bool:  # a band's rank is its priority
            return p >= (eligible.min_rank if eligible else 0) and self._bands[p].has_eligible(_in_band(eligible))

        if self.min_share:
            return self._level.peek_where(ok)
        return next((p for p in sorted(self._bands, reverse=True) if ok(p)), None)

    def _taken(self, request: WaitingRequest) -> None:
        del self._band_of[request.stream_seq]
        if not len(self._bands[request.priority]):
            del self._bands[request.priority]
            self._level.deactivate(request.priority)
        self._tally.add(request, -1)

    def remove(self, stream_seq: int) -> WaitingRequest | None:
        priority = self._band_of.get(stream_seq)
        if priority is None:
            return None
        request = self._bands[priority].remove(stream_seq)
        assert request is not None
        self._taken(request)
        return request

    def position(self, stream_seq: int) -> int:
        """Everything in higher bands starts first, then its place inside its own band."""
        priority = self._band_of[stream_seq]
        above = sum(len(band) for p, band in self._bands.items() if p > priority)
        return above + self._bands[priority].position(stream_seq)

    def work_ahead(self, stream_seq: int) -> float:
        """Tokens in higher bands, then what starts before it inside its own band."""
        priority = self._band_of[stream_seq]
        above = sum(band.waiting_cost() for p, band in self._bands.items() if p > priority)
        return above + self._bands[priority].work_ahead(stream_seq)

    def get(self, stream_seq: int) -> WaitingRequest | None:
        priority = self._band_of.get(stream_seq)
        return None if priority is None else self._bands[priority].get(stream_seq)

    def cost_of(self, stream_seq: int) -> int:
        return self._bands[self._band_of[stream_seq]].cost_of(stream_seq)

    def charge_back(self, labels: Labels, delta_tokens: int) -> None:
        band = self._bands.get(labels.priority)
        if band is not None:
            band.charge_back(labels, delta_tokens)
            if self.min_share:
                self._level.adjust(labels.priority, delta_tokens, self._band_weight(labels.priority))

    def remembered(self) -> int:
        return len(self._level) + sum(band.remembered() for band in self._bands.values())

    def top_priority(self, workload: str) -> int:
        return max((p for p, band in self._bands.items() if band.count(workload)), default=1)

    def top_rank(self) -> float:
        return float(max((p for p, band in self._bands.items() if len(band)), default=0))

    def __len__(self) -> int:
        return len(self._band_of)

    def __contains__(self, stream_seq: object) -> bool:
        return stream_seq in self._band_of


def _in_band(eligible: Eligible | None) -> Eligible | None:
    """Inside a band everyone has its rank: the band's own fair queue checks the rest."""
    return dataclasses.replace(eligible, min_rank=0.0) if eligible is not None and eligible.min_rank else eligible
