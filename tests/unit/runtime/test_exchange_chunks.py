"""What an exchange yields of a re-run's chunks (`runtime.exchange.Exchange`): a re-run that continues
(`Chunk.continued`) repeats no index the reader had; one that starts over yields from index 0 again."""

from __future__ import annotations

from typing import Any, cast

from runtime.exchange import Exchange, RequestEnvelope
from schemas import headers as h
from schemas.messages import Chunk, encoder


def fed(chunks: list[Chunk]) -> list[tuple[int, int]]:
    exchange = Exchange(cast(Any, None), cast(RequestEnvelope, None))
    yielded = [exchange._handle({h.KIND: h.KIND_CHUNK}, encoder.encode(c)) for c in chunks]
    return [(c.index, c.attempt) for c in yielded if isinstance(c, Chunk)]


def test_a_continued_rerun_goes_on_where_the_reader_is() -> None:
    chunks = [Chunk(0, "a", 1), Chunk(1, "b", 1)]
    chunks += [Chunk(i, "abc"[i], 2, continued=True) for i in range(3)]  # it had stored "c" too
    chunks += [Chunk(2, "late", 1), Chunk(3, "d", 2, continued=True)]
    assert fed(chunks) == [(0, 1), (1, 1), (2, 2), (3, 2)]


def test_a_rerun_that_starts_over_yields_everything_again() -> None:
    chunks = [Chunk(0, "a", 1), Chunk(1, "b", 1), Chunk(0, "a", 2), Chunk(1, "b", 2)]
    assert fed(chunks) == [(0, 1), (1, 1), (0, 2), (1, 2)]
