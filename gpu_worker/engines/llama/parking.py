"""Suspended sequences of one llama.cpp context, and the three ways their work survives.

A suspended sequence leaves the decode batch at once. Its KV cells stay in the cache (it keeps its
sequence id) while there is room: resuming it costs nothing. When the cache needs the room (a batch
would not fit, or a resumed or new sequence needs an id), the oldest kept one is evicted: its state is
copied to host memory with llama.cpp's sequence-state API (`llama_state_seq_get_data`) while the host
budget allows, and written back into a free sequence id on resume (`llama_state_seq_set_data`); past
the budget its cells are just dropped and it prefills prompt + answer so far again on resume. Either
way the sequence resumes at the very position it left, with its own sampler, so at temperature 0 the
answer is the one it would have given uninterrupted. Only the batch thread calls into a `Parking`.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

from gpu_worker.engines.llama.sequence import Sequence
from gpu_worker.engines.protocol import ResumeMode


@dataclass(frozen=True)
class SuspendPolicy:
    max_suspended: int = 0  # sequences held suspended at once (each takes a sequence id of the context)
    keep_cells: bool = True  # leave a suspended sequence's cells in the cache while there is room
    host_bytes: int = 1 << 30  # host memory for evicted sequences' states; past it they are dropped


class Parking:
    def __init__(self, ctx: Any, policy: SuspendPolicy, unified: bool) -> None:
        import llama_cpp.llama_cpp as llama

        self._llama = llama
        self._ctx = ctx
        self._memory = llama.llama_get_memory(ctx)
        self.policy = policy
        self.unified = unified  # one cache for every sequence: kept cells take room from running ones
        self.n_ctx = llama.llama_n_ctx(ctx)
        self.parked: list[Sequence] = []  # in suspension order: the oldest is evicted first
        self.host_bytes_used = 0
        self.last_saved_bytes = 0  # the size of the last state saved (what `iris bench suspend` reports)

    def __contains__(self, sequence: Sequence) -> bool:
        return any(s is sequence for s in self.parked)

    def park(self, sequence: Sequence) -> int:
        """Take a sequence out of decoding; the sequence id it gives back (-1: it keeps its cells)."""
        self.parked.append(sequence)
        if self.policy.keep_cells:
            return -1
        return self.evict(sequence)

    def unpark(self, sequence: Sequence, free_id: int) -> ResumeMode:
        """Put it back; `free_id` is an id to load it into when it no longer has its own."""
        self.parked = [s for s in self.parked if s is not sequence]
        if sequence.seq_id >= 0:
            return "kept"
        sequence.seq_id = free_id
        state, sequence.saved_state = sequence.saved_state, None
        if state is None:
            return "reprefilled"
        self.host_bytes_used -= len(state)
        if self._llama.llama_state_seq_set_data(self._ctx, state, len(state), free_id) > 0:
            return "restored"
        self._llama.llama_memory_seq_rm(self._memory, free_id, -1, -1)  # a partial load must not linger
        sequence.cells_dropped()
        return "reprefilled"

    def release(self, sequence: Sequence) -> None:
        """It ended while suspended: its host state goes (its cells go with its id, as for any end)."""
        self.parked = [s for s in self.parked if s is not sequence]
        if sequence.saved_state is not None:
            self.host_bytes_used -= len(sequence.saved_state)
            sequence.saved_state = None

    def oldest_kept(self) -> Sequence | None:
        return next((s for s in self.parked if s.seq_id >= 0), None)

    def evict(self, sequence: Sequence) -> int:
        """Its cells leave the cache: saved to host memory if the budget allows, else dropped. Returns
        the sequence id it gave back."""
        seq_id = sequence.seq_id
        if sequence.n_cached > 0:
            sequence.saved_state = self._saved(seq_id)
            if sequence.saved_state is None:
                sequence.cells_dropped()
        self._llama.llama_memory_seq_rm(self._memory, seq_id, -1, -1)
        sequence.seq_id = -1
        return seq_id

    def _saved(self, seq_id: int) -> Any:
        llama = self._llama
        size = llama.llama_state_seq_get_size(self._ctx, seq_id)
        if self.host_bytes_used + size > self.policy.host_bytes:
            return None
        state = (ctypes.c_uint8 * size)()
        if llama.llama_state_seq_get_data(self._ctx, state, size, seq_id) != size:
            return None
        self.host_bytes_used += size
        self.last_saved_bytes = size
        return state

    def room_short(self, running: list[Sequence], batch_tokens: int) -> bool:
        """Whether this step's batch might not find free cells while kept sequences hold theirs."""
        if not self.unified or self.oldest_kept() is None:
            return False
        wanted = sum(len(s.feed) - s.n_cached if s.prefilling else 1 for s in running)
        used = sum(self._cells(s.seq_id) for s in [*running, *self.parked] if s.seq_id >= 0)
        return self.n_ctx - used < min(wanted, batch_tokens)

    def _cells(self, seq_id: int) -> int:
        pos_max = self._llama.llama_memory_seq_pos_max(self._memory, seq_id)
        if pos_max < 0:
            return 0
        return int(pos_max - self._llama.llama_memory_seq_pos_min(self._memory, seq_id) + 1)
