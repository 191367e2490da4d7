"""Continuous batching: one llama.cpp context, one KV cache split by sequence id, one decode per step.

A single thread owns the context. Each step it (1) ends sequences whose `StopSignal` fired and removes
their KV cells, (2) lets waiting sequences join while sequence ids are free, (3) builds one batch: one
token for every sequence that is generating, then prompt chunks of joining sequences up to the batch
capacity, (4) runs one `llama_decode` and (5) samples one token for every sequence whose prompt is in (each
with its own sampler chain: grammar, penalties and seed are per sequence), with its logprobs if asked.
A sequence that finishes has its cells removed and its id freed before its `Finished` is emitted, so
whoever reads `Finished` can rely on the cache no longer holding it. Nothing else touches the context;
`cells_in_use` waits for the step lock.

Suspension (`parking.Parking`): a running sequence whose `StopSignal` asks to suspend leaves the batch at
the start of a step and its reader gets `Suspended`; its signal's waker (a resume, or a stop) brings it
back into the step, where it rejoins once fewer than `slots` run (`Resumed`), or ends. The context has
`slots + max_suspended` sequence ids, so a suspended sequence can keep its cells while `slots` run.
"""

from __future__ import annotations

import ctypes
import math
import threading
from collections import deque
from typing import Any

from gpu_worker.engines.llama.logprobs import token_logprob
from gpu_worker.engines.llama.parking import Parking, SuspendPolicy
from gpu_worker.engines.llama.sequence import Sequence, token_piece
from gpu_worker.engines.protocol import Resumed, Suspended
from schemas.messages import FinishReason


class DecodeError(RuntimeError):
    """llama_decode refused a batch; the sequences in it fail, the others go on."""


class BatchLoop:
    def __init__(
        self,
        ctx: Any,
        vocab: Any,
        slots: int,
        batch_tokens: int,
        suspend: SuspendPolicy | None = None,
        kv_unified: bool = True,
    ) -> None:
        import llama_cpp.llama_cpp as llama

        self._llama = llama
        self._ctx = ctx
        self._vocab = vocab
        self._memory = llama.llama_get_memory(ctx)
        self.slots = slots
        self.batch_tokens = batch_tokens
        self._batch = llama.llama_batch_init(batch_tokens, 0, 1)
        self._piece_buffer = ctypes.create_string_buffer(64)
        self._n_vocab = llama.llama_vocab_n_tokens(vocab)
        self._end_tokens: list[int] | None = None  # end-of-generation token ids (`_mask_end_tokens`)
        self._cond = threading.Condition()
        self._waiting: deque[Sequence] = deque()
        self.parking = Parking(ctx, suspend or SuspendPolicy(), kv_unified)
        self.n_ids = slots + self.parking.policy.max_suspended
        self._free_ids = list(range(self.n_ids - 1, -1, -1))
        self._running: dict[int, Sequence] = {}
        self._woken: list[Sequence] = []  # suspended ones whose signal was resumed or stopped
        self._resuming: deque[Sequence] = deque()  # resumed, waiting for fewer than `slots` to run
        self._closed = False
        self._step_lock = threading.RLock()  # held across a step; parking re-enters it
        self._thread = threading.Thread(target=self._run, name="llama-batch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, sequence: Sequence) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("engine is closed")
            sequence.stop.waker = lambda: self._wake(sequence)
            self._waiting.append(sequence)
            self._cond.notify()

    def _wake(self, sequence: Sequence) -> None:
        """From any thread: a suspended sequence's signal changed (resume or stop)."""
        with self._cond:
            self._woken.append(sequence)
            self._cond.notify()

    def close(self) -> None:
        """Stop the thread; sequences still waiting or running fail. Blocks until the thread is gone."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join()
        self._llama.llama_batch_free(self._batch)

    def cells_in_use(self) -> dict[int, int]:
        """seq id → KV cells it holds, for every sequence id that holds any."""
        with self._step_lock:
            used = {}
            for seq_id in range(self.n_ids):
                pos_max = self._llama.llama_memory_seq_pos_max(self._memory, seq_id)
                if pos_max >= 0:
                    used[seq_id] = pos_max + 1
            return used

    def _run(self) -> None:
        while self._admit():
            with self._step_lock:
                try:
                    self._step()
                except Exception as exc:  # a bug or a native failure: fail what runs, keep serving
                    for sequence in list(self._running.values()):
                        self._end(sequence, error=exc)
        with self._step_lock:
            closed = RuntimeError("engine closed")
            for sequence in [*self._running.values(), *self._waiting, *self.parking.parked]:
                self._end(sequence, error=closed)

    def _admit(self) -> bool:
        """Wait for work; move waiting sequences into free ids. False once closed."""
        with self._cond:
            while not self._closed and not self._waiting and not self._running and not self._woken:
                self._cond.wait()
            if self._closed:
                return False
            woken, self._woken = self._woken, []
        self._take_woken(woken)
        while self._resuming and len(self._running) < self.slots:
            self._unpark(self._resuming.popleft())
        while self._waiting and len(self._running) < self.slots:
            with self._cond:
                sequence = self._waiting.popleft()
            sequence.seq_id = self._take_id()
            self._running[sequence.seq_id] = sequence
        return True

    def _take_woken(self, woken: list[Sequence]) -> None:
        for sequence in woken:
            if sequence not in self.parking or any(s is sequence for s in self._resuming):
                continue
            if sequence.stop.reason is not None:
                with self._step_lock:
                    self._end(sequence, reason=sequence.stop.reason)
            elif not sequence.stop.suspend_wanted:
                self._resuming.append(sequence)

    def _take_id(self) -> int:
        """A free sequence id; the oldest suspended sequence that kept its cells gives its id up if none is."""
        with self._cond:
            if self._free_ids:
                return self._free_ids.pop()
        kept = self.parking.oldest_kept()
        assert kept is not None, "more sequences than sequence ids"
        with self._step_lock:
            return self.parking.evict(kept)

    def _unpark(self, sequence: Sequence) -> None:
        with self._step_lock:
            if sequence.stop.reason is not None:  # stopped again after its resume
                self._end(sequence, reason=sequence.stop.reason)
                return
            free_id = -1 if sequence.seq_id >= 0 else self._take_id()
            mode = self.parking.unpark(sequence, free_id)
            self._running[sequence.seq_id] = sequence
        sequence.emit(Resumed(mode))

    def _park(self, sequence: Sequence) -> None:
        self._running.pop(sequence.seq_id, None)
        given_back = self.parking.park(sequence)
        if given_back >= 0:
            with self._cond:
                self._free_ids.append(given_back)
        sequence.emit(Suspended())
        if not sequence.stop.suspend_wanted or sequence.stop.reason is not None:
            self._wake(sequence)  # resumed or stopped before it was parked: its waker found it running

    def _make_room(self) -> None:
        """Evict kept sequences, oldest first, until this step's batch surely finds free cells."""
        running = list(self._running.values())
        while self.parking.room_short(running, self.batch_tokens):
            kept = self.parking.oldest_kept()
            assert kept is not None
            given_back = self.parking.evict(kept)
            with self._cond:
                self._free_ids.append(given_back)

    def _step(self) -> None:
        for sequence in list(self._running.values()):
            if sequence.stop.reason is not None:
                self._end(sequence, reason=sequence.stop.reason)
            elif sequence.stop.suspend_wanted:
                self._park(sequence)
        self._make_room()
        fed = self._fill_batch()
        if not fed:
            return
        status = self._llama.llama_decode(self._ctx, self._batch)
        if status != 0:
            error = DecodeError(f"llama_decode returned {status} for a batch of {self._batch.n_tokens} tokens")
            for sequence, _, _ in fed:
                self._end(sequence, error=error)
            return
        self._sample(fed)

    def _fill_batch(self) -> list[tuple[Sequence, int, int]]:
        """Generating sequences first (one token each), then prompt chunks. (sequence, tokens, logits index)."""
        batch, n = self._batch, 0
        fed: list[tuple[Sequence, int, int]] = []
        order = sorted(self._running.values(), key=lambda s: s.prefilling)
        for sequence in order:
            budget = self.batch_tokens - n
            if budget <= 0:
                break
            tokens, wants_logits = sequence.next_tokens(budget)
            for offset, token in enumerate(tokens):
                batch.token[n] = token
                batch.pos[n] = sequence.n_cached + offset
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = sequence.seq_id
                batch.logits[n] = 0
                n += 1
            if wants_logits:
                batch.logits[n - 1] = 1
            fed.append((sequence, len(tokens), n - 1 if wants_logits else -1))
        batch.n_tokens = n
        return fed

    def _sample(self, fed: list[tuple[Sequence, int, int]]) -> None:
        llama = self._llama
        for sequence, n_tokens, logits_index in fed:
            sequence.n_cached += n_tokens
            if logits_index < 0:
                continue
            if not sequence.may_end:
                self._mask_end_tokens(logits_index)
            token = sequence.sampler.sample(self._ctx, logits_index)
            is_eog = bool(llama.llama_vocab_is_eog(self._vocab, token))
            piece = b"" if is_eog else token_piece(self._vocab, token, self._piece_buffer)
            logprob = None
            if sequence.top_logprobs is not None and not is_eog:
                logits = llama.llama_get_logits_ith(self._ctx, logits_index)
                logprob = token_logprob(logits, self._n_vocab, token, sequence.top_logprobs, self._token_text)
            reason = sequence.accept(token, is_eog, piece, logprob)
            if reason is not None:
                self._end(sequence, reason=reason)

    def _mask_end_tokens(self, logits_index: int) -> None:
        """No end-of-generation token can be drawn from these logits (`min_tokens` not reached)."""
        if self._end_tokens is None:  # found once, on first use: a check of each token of the vocabulary
            self._end_tokens = [t for t in range(self._n_vocab) if self._llama.llama_vocab_is_eog(self._vocab, t)]
        logits = self._llama.llama_get_logits_ith(self._ctx, logits_index)
        for token in self._end_tokens:
            logits[token] = -math.inf

    def _token_text(self, token: int) -> str:
        return token_piece(self._vocab, token, self._piece_buffer).decode(errors="replace")

    def _end(self, sequence: Sequence, reason: FinishReason = "stop", error: BaseException | None = None) -> None:
        """Free the sequence's cells and id first, then tell its reader."""
        self.parking.release(sequence)
        if sequence.seq_id >= 0:
            self._llama.llama_memory_seq_rm(self._memory, sequence.seq_id, -1, -1)
            self._running.pop(sequence.seq_id, None)
            with self._cond:
                self._free_ids.append(sequence.seq_id)
            sequence.seq_id = -1
        sequence.free_sampler()
        if error is not None:
            sequence.fail(error)
        else:
            sequence.finish(reason)
