"""`iris dlq`: list, replay and remove the dead letters in stream `IRIS_DLQ`.

Listing reads headers only, so no prompt text crosses the wire or reaches the terminal. A replay publishes
the original body to its original subject with its original headers, under a new id and with a fresh
deadline (`schemas.dead_letters.replay_headers`), and removes the dead letter only once JetStream has
acknowledged the republished request: a replay cut short leaves the dead letter where it was, and running
it again publishes nothing twice (same new id, inside the dedupe window). Removing erases the stored bytes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import NotFoundError

from iris.ops.listing import message_count, read_newest, table
from runtime.clock import now_ms
from schemas import headers as h
from schemas.dead_letters import DeadLetter, read_dead_letter, replay_headers
from schemas.errors import InvalidRequest
from schemas.headers import DEFAULT_DEADLINE_S
from schemas.messages import error_decoder, result_decoder
from schemas.subjects import DLQ_FILTER, DLQ_STREAM, parse_request_subject, request_owner

ANSWER_GRACE_S = 5.0


@dataclass(frozen=True)
class Replayed:
    dead: DeadLetter
    request_id: str  # the id it runs under now
    stream_seq: int  # its new sequence in IRIS_REQUESTS
    reply_to: str
    deadline_ms: int  # 0 = the broker's default


async def dead_letter_count(nc: NATS) -> int:
    return await message_count(nc, DLQ_STREAM)


async def list_dead_letters(nc: NATS, limit: int = 0) -> list[DeadLetter]:
    """The dead letters, oldest first; with `limit`, only the newest `limit` (headers only: no prompt)."""
    return await read_newest(nc, DLQ_STREAM, DLQ_FILTER, _row, limit, headers_only=True)


def _row(msg: Msg) -> DeadLetter:
    return read_dead_letter(msg.metadata.sequence.stream, dict(msg.headers or {}))


async def replay(nc: NATS, dlq_seq: int, deadline_s: float | None = None, reply_to: str = "") -> Replayed:
    """Publish dead letter `dlq_seq` again (answers to `reply_to` when given, else to the original inbox),
    then remove it. Raises `NotFoundError` when there is no such dead letter, `InvalidRequest` when its
    subject was never a request subject (nothing could run it)."""
    js = nc.jetstream()
    stored = await js.get_msg(DLQ_STREAM, dlq_seq, direct=True)
    headers = dict(stored.headers or {})
    dead = read_dead_letter(dlq_seq, headers)
    if parse_request_subject(dead.subject) is None:
        raise InvalidRequest(f"dead letter {dlq_seq} was published to {dead.subject!r}, not a request subject")
    republished = replay_headers(headers, dlq_seq, now_ms(), deadline_s)
    if reply_to:
        republished[h.REPLY_TO] = reply_to
    ack = await js.publish(dead.subject, stored.data or b"", headers=republished)
    await js.delete_msg(DLQ_STREAM, dlq_seq)
    deadline = republished.get(h.DEADLINE, "")
    deadline_ms = int(deadline) if deadline.isdigit() else 0
    request_id = h.request_id_of(republished[h.MSG_ID], request_owner(dead.subject))
    return Replayed(dead, request_id, int(ack.seq), republished.get(h.REPLY_TO, ""), deadline_ms)


async def replay_many(
    nc: NATS, dlq_seqs: list[int], deadline_s: float | None = None, wait: bool = False
) -> tuple[list[str], int]:
    """Replay each dead letter (all when `dlq_seqs` is empty): a line per outcome, and how many failed.
    With `wait`, answers come to this connection instead of the original inbox, and each line says how
    the replay ended."""
    seqs = dlq_seqs or [d.dlq_seq for d in await list_dead_letters(nc)]
    lines, failed = [], 0
    for seq in seqs:
        inbox = nc.new_inbox() if wait else ""
        answers = await nc.subscribe(inbox) if wait else None
        try:
            done = await replay(nc, seq, deadline_s, inbox)
        except NotFoundError:
            lines.append(f"{seq}: no such dead letter")
            failed += 1
        except InvalidRequest as exc:
            lines.append(f"{seq}: not replayed: {exc.message}")
            failed += 1
        else:
            where = f"{done.dead.subject} as request {done.request_id} (IRIS_REQUESTS seq {done.stream_seq})"
            lines.append(f"{seq}: replayed to {where}")
            if answers is not None:
                outcome, ok = await _final_answer(answers, done)
                lines.append(f"{seq}: {outcome}")
                failed += not ok
        finally:
            if answers is not None:
                await answers.unsubscribe()
    return lines, failed


async def _final_answer(answers: Subscription, done: Replayed) -> tuple[str, bool]:
    """The replay's result or error, read from its inbox until its deadline (and a little more)."""
    deadline_s = (done.deadline_ms - now_ms()) / 1000 if done.deadline_ms else DEFAULT_DEADLINE_S
    end = time.monotonic() + max(1.0, deadline_s) + ANSWER_GRACE_S
    while True:
        try:
            msg = await answers.next_msg(timeout=max(0.1, end - time.monotonic()))
        except NatsTimeout:
            return "no answer before its deadline", False
        kind = (msg.headers or {}).get(h.KIND)
        if kind == h.KIND_RESULT:
            result = result_decoder.decode(msg.data)
            return f"result ({result.finish_reason}, {result.usage.completion_tokens} tokens): {result.text}", True
        if kind == h.KIND_ERROR:
            error = error_decoder.decode(msg.data)
            return f"error {error.code}: {error.message}", False


async def remove(nc: NATS, dlq_seqs: list[int]) -> int:
    """Erase the given dead letters, or all of them when `dlq_seqs` is empty; how many went."""
    js = nc.jetstream()
    if not dlq_seqs:
        count = await dead_letter_count(nc)
        await js.purge_stream(DLQ_STREAM)
        return count
    removed = 0
    for seq in dlq_seqs:
        try:
            removed += bool(await js.delete_msg(DLQ_STREAM, seq))
        except NotFoundError:
            continue
    return removed


def as_table(letters: list[DeadLetter]) -> str:
    """One line per dead letter, reason last (it is the long one)."""
    rows = [("SEQ", "TIME (UTC)", "MODEL", "WORKLOAD", "CODE", "ATTEMPTS", "REQUEST ID", "REASON")]
    for d in letters:
        when = datetime.fromtimestamp(d.dead_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S") if d.dead_ms else "?"
        rows.append(
            (str(d.dlq_seq), when, d.model or "?", d.workload or "?", d.code, str(d.attempts), d.request_id, d.reason)
        )
    return table(rows)
