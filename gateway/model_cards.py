"""The model cards workers publish in KV bucket `IRIS_MODELS` (`schemas.model_cards`), read on demand for
`/api/show`: a card is small and asked for rarely (a client's start), so nothing is cached but the handle."""

from __future__ import annotations

import msgspec
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from schemas.errors import InternalError
from schemas.model_cards import ModelCard, model_card_decoder
from schemas.subjects import MODEL_BUCKET

READ_TIMEOUT_S = 2.0


class ModelCards:
    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self._kv: KeyValue | None = None

    async def card(self, model: str) -> ModelCard | None:
        """The card of a served model name, or None when no worker of it published one."""
        try:
            if self._kv is None:
                self._kv = await self.nc.jetstream(timeout=READ_TIMEOUT_S).key_value(MODEL_BUCKET)
            entry = await self._kv.get(model)
        except NotFoundError:  # no bucket (no broker ever ran), no key, or a deleted key
            return None
        except Exception as exc:
            raise InternalError(f"could not read the model card of {model!r}: {exc}") from exc
        try:
            return model_card_decoder.decode(entry.value or b"")
        except msgspec.DecodeError:
            return None
