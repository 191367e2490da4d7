"""Label values for Prometheus metrics that clients cannot multiply.

Model and workload names come from request subjects, which anyone may publish: every distinct value would
be a new time series on `/metrics`, kept for the life of the process. So only models a worker serves get
their own label (others count as `_unserved`), and each model's workloads are capped: past the cap they
count together as `_other`. Configured and early workloads keep their names; a workload whose series went
idle and were removed frees its place (`forget`).
"""

from __future__ import annotations

OTHER = "_other"
UNSERVED = "_unserved"
MAX_MODELS = 64
MAX_WORKLOADS_PER_MODEL = 16


class BoundedLabels:
    """The first `max_values` distinct values pass as they are; later ones become `_other`."""

    def __init__(self, max_values: int) -> None:
        self.max_values = max_values
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) >= self.max_values:
            return OTHER
        self._seen.add(value)
        return value

    def discard(self, value: str) -> None:
        """`value` has left `/metrics`: its place is free for another."""
        self._seen.discard(value)


class FlowLabels:
    """(model, workload) label values: served models only, a bounded set of workloads each."""

    def __init__(self, max_models: int = MAX_MODELS, max_workloads: int = MAX_WORKLOADS_PER_MODEL) -> None:
        self._models = BoundedLabels(max_models)
        self._workloads: dict[str, BoundedLabels] = {}
        self.max_workloads = max_workloads

    def serve(self, model: str) -> None:
        """A worker serves `model` (heard in a heartbeat): its flows get labels of their own."""
        if model not in self._workloads and self._models(model) == model:
            self._workloads[model] = BoundedLabels(self.max_workloads)

    def model(self, model: str) -> str:
        return model if model in self._workloads else UNSERVED

    def forget(self, model: str, workload: str) -> None:
        """The flow's series were removed (idle): its workload name no longer holds a place under the cap."""
        workloads = self._workloads.get(model)
        if workloads is not None:
            workloads.discard(workload)

    def flow(self, model: str, workload: str) -> tuple[str, str]:
        workloads = self._workloads.get(model)
        if workloads is None:
            return UNSERVED, UNSERVED
        return model, workloads(workload)
