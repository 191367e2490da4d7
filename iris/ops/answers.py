"""`iris answers`: the stored final replies in stream `IRIS_ANSWERS`, for an operator.

Listing reads each stored final and prints one line (sequence, time, owner, request id, how it ended and
its token usage), never the answer text; `show` prints one answer whole, as its client got it.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from iris.ops.listing import message_count, read_newest, table
from runtime.answers import fetch_final
from schemas import headers as h
from schemas.messages import Error, Result, error_decoder, result_decoder
from schemas.subjects import ANSWER_FILTER, ANSWER_STREAM, parse_answer_subject


@dataclass(frozen=True)
class AnswerLine:
    seq: int
    stored_at: str  # RFC 3339, UTC
    owner: str  # "" = none
    request_id: str
    kind: str  # result | error
    ending: str  # finish_reason of a result, code of an error
    prompt_tokens: int = 0
    completion_tokens: int = 0


async def answer_count(nc: NATS) -> int:
    return await message_count(nc, ANSWER_STREAM)


async def list_answers(nc: NATS, limit: int = 0) -> list[AnswerLine]:
    """The stored answers, oldest first; with `limit`, only the newest `limit`."""
    return await read_newest(nc, ANSWER_STREAM, ANSWER_FILTER, _row, limit)


def _row(msg: Msg) -> AnswerLine:
    meta = msg.metadata
    return _line(meta.sequence.stream, meta.timestamp.isoformat(), msg.subject, msg.headers or {}, msg.data)


def _line(seq: int, stored_at: str, subject: str, headers: dict[str, str], data: bytes) -> AnswerLine:
    owner, request_id = parse_answer_subject(subject) or (None, subject)
    kind = headers.get(h.KIND, "?")
    try:
        final = decode_final(kind, data)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return AnswerLine(seq, stored_at, owner or "", request_id, kind, "unreadable")
    if isinstance(final, Error):
        return AnswerLine(seq, stored_at, owner or "", request_id, kind, final.code)
    usage = final.usage
    return AnswerLine(
        seq, stored_at, owner or "", request_id, kind, final.finish_reason, usage.prompt_tokens, usage.completion_tokens
    )


def decode_final(kind: str, data: bytes) -> Result | Error:
    return result_decoder.decode(data) if kind == h.KIND_RESULT else error_decoder.decode(data)


async def show_answer(nc: NATS, request_id: str, owner: str | None) -> str | None:
    """One stored answer as JSON (`{"kind": ..., "answer": {...}}`); None when there is none."""
    final = await fetch_final(nc, request_id, owner)
    if final is None:
        return None
    answer = decode_final(final.kind, final.data)
    return msgspec.json.encode({"kind": final.kind, "stored_at": final.stored_at, "answer": answer}).decode()


def as_table(lines: list[AnswerLine]) -> str:
    rows = [("SEQ", "STORED (UTC)", "OWNER", "REQUEST ID", "KIND", "ENDING", "TOKENS (PROMPT+COMPLETION)")]
    for a in lines:
        tokens = f"{a.prompt_tokens}+{a.completion_tokens}" if a.kind == h.KIND_RESULT else ""
        rows.append((str(a.seq), a.stored_at[:19], a.owner or "-", a.request_id, a.kind, a.ending, tokens))
    return table(rows)
