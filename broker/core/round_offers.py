"""Which worker a round's next lease goes to, with at most `room` workers offered in one round. Pure.

Each worker a round leases to is one `LeaseOffer` (a request/reply, its lease records, an acknowledged
publish). The shell bounds the offers it waits on answers for (`broker.term`), so that a fleet of 10,000
free workers is not sent 10,000 offers in one burst: that many answers, acknowledgements and timers at
once kept a starved broker from renewing its lead or reading the answers before their timeouts, and every
lease came back to the queue. A round spreads its leases over the emptiest workers (the worker book's
order), one request per worker first, so that a backlog smaller than the fleet runs on as many workers as
can take it. Only when the backlog would fill every free slot anyway and the model has more free workers
than the round may still offer to does it fill each worker it offers to instead: then every offer of a
bounded round carries as many leases as it can.
"""

from __future__ import annotations

from broker.core.workers import WorkerBook, WorkerState


class RoundOffers:
    def __init__(self, room: int | None) -> None:
        """`room`: how many workers this round may offer to (None: no bound)."""
        self.room = room
        self.workers: set[str] = set()  # the workers offered to so far in this round
        self._fill = False
        self._filling: WorkerState | None = None

    def start_pool(self, book: WorkerBook, waiting: int) -> None:
        """The round moves on to another model's workers, with `waiting` requests queued for them."""
        self._filling = None
        bounded = self.room is not None and book.free_workers > self.room - len(self.workers)
        self._fill = bounded and waiting >= book.free_slots

    def worker(self, book: WorkerBook) -> WorkerState | None:
        """The worker for the next lease; None when no worker has a free slot the round may offer."""
        if self._filling is not None and self._filling.free_slots:
            return self._filling
        worker = book.most_free()
        if worker is None or self.room is None or worker.worker_id in self.workers:
            return worker
        if len(self.workers) >= self.room:
            return None
        self.workers.add(worker.worker_id)
        if self._fill:
            self._filling = worker
        return worker
