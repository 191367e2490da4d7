"""Forward an answer's text exactly once over a stream that cannot take bytes back.

Delivery is at-least-once: when a worker dies mid-answer the broker re-runs the request and its chunks
arrive again with a higher `attempt`. An HTTP stream has already sent the first attempt's text, so the
re-run is held back until it has caught up with what was sent and only the text beyond it is forwarded.
If the re-run says something else (sampling at temperature > 0), the stream cannot be repaired and ends
with `worker_failed`. The final `Result.text` is the whole answer of the last attempt and closes any gap
left by a lost chunk.
"""

from __future__ import annotations

from schemas.errors import WorkerFailed
from schemas.messages import Chunk

DIVERGED = "the answer was restarted on another worker and differs from the part already sent; retry the request"


class AnswerText:
    def __init__(self) -> None:
        self.sent = ""  # text already forwarded
        self._attempt = 0
        self._in_sync = True  # the current attempt's text so far is exactly `sent`
        self._rerun = ""  # text of a later attempt, while it catches up with `sent`

    def feed(self, chunk: Chunk) -> str:
        """The part of this chunk's text not yet forwarded ('' while a re-run catches up)."""
        if chunk.attempt < self._attempt:
            return ""  # late chunk of a replaced attempt
        if chunk.attempt > self._attempt:
            self._attempt = chunk.attempt
            self._rerun = ""
            self._in_sync = not self.sent
        if self._in_sync:
            self.sent += chunk.text
            return chunk.text
        self._rerun += chunk.text
        delta = self._catch_up(self._rerun)
        self._in_sync = len(self._rerun) >= len(self.sent)
        return delta

    def finish(self, final_text: str) -> str:
        """What is left to forward once the final text is known."""
        return self._catch_up(final_text)

    def _catch_up(self, text: str) -> str:
        if len(text) <= len(self.sent):
            if not self.sent.startswith(text):
                raise WorkerFailed(DIVERGED)
            return ""
        if not text.startswith(self.sent):
            raise WorkerFailed(DIVERGED)
        delta = text[len(self.sent) :]
        self.sent = text
        return delta
