"""The scheduler's index with the ticket events (`broker.core.tickets`): a ticket past its cut-off ends, an
app releases its own by id. Pure and synchronous like the rest of the core.
"""

from __future__ import annotations

from broker.core.decisions import NOTHING, Decisions, TicketEnded
from broker.core.index import RequestIndex
from schemas.reply_subjects import may_cancel


class TicketingIndex(RequestIndex):
    def _expire_tickets(self, now_ms: int) -> tuple[TicketEnded, ...]:
        """Tickets held past their cut-off: their slots are free."""
        expired = []
        for cutoff_ms, seq in self.tickets.past_cutoff(now_ms):
            model = self._model_of.get(seq)
            lease = None if model is None else self.pools[model].leases.get(seq)
            if lease is not None and lease.ticket and lease.cutoff_ms == cutoff_ms:
                self._lease_ended(seq, now_ms)
                expired.append(TicketEnded(lease, "expired at max_inflight"))
        return tuple(expired)

    def release_ticket(self, ticket_id: str, now_ms: int, owner: str | None = None) -> Decisions:
        """An app is done with its ticket (found by id, released by `owner`, see `may_cancel`): the slot is
        free at once."""
        seq = self.tickets.seq_of(ticket_id)
        if seq is None:
            return NOTHING
        lease = self.pools[self._model_of[seq]].leases.get(seq)
        if lease is not None and not may_cancel(owner, lease.reply_to):
            return NOTHING
        self._lease_ended(seq, now_ms)
        ended = () if lease is None else (TicketEnded(lease, "released by id"),)
        return Decisions(tickets_ended=ended, round_due=True)
