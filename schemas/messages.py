"""Wire messages: the request body, the replies a client reads, and the broker↔worker protocol.

Requests and configs forbid unknown fields and carry `Meta` bounds, so a bad value fails with its JSON
path (`Expected int <= 32768 - at $.max_tokens`). Reply kinds are told apart by header `Iris-Kind`,
and each has one module-level decoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

MAX_TOKENS_LIMIT = 32_768
MAX_PROMPT_CHARS = 512_000
MAX_STOP_SEQUENCES = 8
MAX_TOP_LOGPROBS = 20


class ChatMessage(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    role: Literal["system", "user", "assistant", "tool"]
    content: Annotated[str, Meta(max_length=MAX_PROMPT_CHARS)]


class OutputFormat(msgspec.Struct, forbid_unknown_fields=True, frozen=True, omit_defaults=True):
    """Structured output: the answer is constrained (a grammar on llama.cpp) to JSON, or to JSON that
    validates against `json_schema`. `type: "json"` without a schema means any JSON object."""

    type: Literal["json"] = "json"
    json_schema: dict[str, Any] | None = None


TokenId = Annotated[int, Meta(ge=0, le=2**31 - 1)]
LogitBias = Annotated[float, Meta(ge=-100.0, le=100.0)]


class GenerateRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True, omit_defaults=True):
    """The body of `iris.req.<model>.<workload>`: exactly one of `prompt` or `messages`.

    `max_tokens: null` generates until a stop or until the slot's context is full; a limit larger than
    what the context leaves is clipped (the answer then ends with `finish_reason: "length"`). `min_tokens`
    (vLLM's): the answer ends neither at an end-of-generation token nor at a stop string before it has
    that many tokens; equal to `max_tokens`, every answer is exactly that long (what benchmarks want).
    Sampling fields left `null` take the engine's defaults (top_k 40, min_p 0.05, no penalties)."""

    prompt: Annotated[str, Meta(max_length=MAX_PROMPT_CHARS)] | None = None
    messages: Annotated[list[ChatMessage], Meta(min_length=1, max_length=1024)] | None = None
    max_tokens: Annotated[int, Meta(ge=1, le=MAX_TOKENS_LIMIT)] | None = 256
    min_tokens: Annotated[int, Meta(ge=0, le=MAX_TOKENS_LIMIT)] = 0
    temperature: Annotated[float, Meta(ge=0.0, le=2.0)] = 0.8
    top_p: Annotated[float, Meta(gt=0.0, le=1.0)] = 0.95
    stop: Annotated[list[Annotated[str, Meta(min_length=1, max_length=64)]], Meta(max_length=MAX_STOP_SEQUENCES)] = []
    seed: Annotated[int, Meta(ge=0, le=2**31 - 1)] | None = None
    stream: bool = True
    top_k: Annotated[int, Meta(ge=0, le=1000)] | None = None  # 0 = no top-k cut
    min_p: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    repeat_penalty: Annotated[float, Meta(ge=0.0, le=10.0)] | None = None  # 1.0 = off (llama.cpp/Ollama)
    repeat_last_n: Annotated[int, Meta(ge=-1, le=MAX_TOKENS_LIMIT)] | None = None  # -1 = whole context
    presence_penalty: Annotated[float, Meta(ge=-2.0, le=2.0)] | None = None
    frequency_penalty: Annotated[float, Meta(ge=-2.0, le=2.0)] | None = None
    logit_bias: Annotated[dict[TokenId, LogitBias], Meta(max_length=1024)] | None = None
    logprobs: bool = False  # each chunk and the result carry the sampled tokens' log-probabilities
    top_logprobs: Annotated[int, Meta(ge=0, le=MAX_TOP_LOGPROBS)] = 0
    response_format: OutputFormat | None = None

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("exactly one of `prompt` or `messages` is required")
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens ({self.min_tokens}) is more than max_tokens ({self.max_tokens})")
        if self.min_tokens and self.response_format is not None:
            raise ValueError("min_tokens cannot be combined with response_format: the format decides the end")


class QueueUpdate(msgspec.Struct, frozen=True):
    position: int
    eta_s: float


class TopLogprob(msgspec.Struct, frozen=True, array_like=True):
    token: str
    logprob: float


class TokenLogprob(msgspec.Struct, frozen=True, omit_defaults=True):
    """One sampled token: its text, its log-probability under the model (before sampling filters), and
    the most likely alternatives when `top_logprobs` asked for them."""

    token: str
    logprob: float
    top: list[TopLogprob] = []


class Chunk(msgspec.Struct, frozen=True):
    index: int
    text: str
    attempt: int = 1
    logprobs: list[TokenLogprob] | None = None  # one per token of `text`, when the request asked
    # This attempt continues the text of the earlier ones (`Progress`): indexes go on, and an index already
    # received is the same text again. False on a re-run that starts over: its reader restarts the answer.
    continued: bool = False


class Progress(msgspec.Struct, frozen=True):
    """What a running answer has produced so far (stored before any of it reaches the client): another
    worker of the same model continues from `tokens`, and sends `pieces` (the chunk texts, by index) again
    first, so its client misses none."""

    attempt: int
    model: str
    tokens: list[int]  # the engine's token ids, in order
    pieces: list[str]  # chunk texts, chunk index = position


class Usage(msgspec.Struct, frozen=True):
    prompt_tokens: int
    completion_tokens: int


class Timings(msgspec.Struct, frozen=True):
    queued_ms: float
    run_ms: float


# "shutdown": a worker stopping (SIGTERM) cut the answer at its drain timeout; never in a `Result`, its
# client gets `worker_failed` instead (as "cancelled" becomes `cancelled`).
FinishReason = Literal["stop", "length", "deadline", "max_inflight", "cancelled", "shutdown"]


class Result(msgspec.Struct, frozen=True):
    text: str
    finish_reason: FinishReason
    usage: Usage
    timings: Timings
    worker: str
    attempt: int = 1
    logprobs: list[TokenLogprob] | None = None  # every token of `text`, when the request asked


class Error(msgspec.Struct, frozen=True):
    code: str
    message: str
    retry_after_s: float | None = None


class StreamEntry(msgspec.Struct, frozen=True):
    """What every record of a request in `IRIS_REQUESTS` starts with: where it sits, what it is, where its
    answer goes and by when (the broker's `WaitingRequest` and a `Lease` both extend it)."""

    stream_seq: int
    request_id: str
    model: str
    workload: str
    reply_to: str
    deadline_ms: int
    enqueued_ms: int


class Lease(StreamEntry, frozen=True):
    """One request handed to one worker; the value stored under its stream sequence in `IRIS_LEASES`."""

    worker_id: str
    attempt: int
    leased_ms: int
    priority: int = 1
    user: str = ""
    cost_tokens: int = 0
    cutoff_ms: int = 0  # max_inflight: the worker stops the answer here (0 = no cut-off)
    ticket: bool = False  # an admission ticket: held by the app that asked (worker_id ""), not a worker
    end_user: str = ""  # Iris-End-User: who the user asked for (splits its share)
    owner: str = ""  # the owner token of the request's subject ("" = none): where its answer is stored


class LeaseDone(msgspec.Struct, frozen=True):
    """A lease has ended: its final reply is out and the request has left the stream. `completed`: it
    generated an answer, and the tokens are what it really cost (else an error ended it; tokens are 0)."""

    stream_seq: int
    model: str
    workload: str
    prompt_tokens: int
    completion_tokens: int
    completed: bool = True
    run_ms: float = 0.0  # engine time of the answer, as its worker measured it (0 = not measured: a ticket)


class LeasesDone(msgspec.Struct, frozen=True):
    """Every lease a worker ended since its last such message (`iris.worker.done.<model>`)."""

    done: list[LeaseDone]


class LeaseOffer(msgspec.Struct, frozen=True):
    """The leases one scheduling round hands to one worker (`iris.worker.<id>.lease`, request/reply)."""

    leases: list[Lease]


class LeaseAnswer(msgspec.Struct, frozen=True):
    """The worker's answer to a `LeaseOffer`, at once: the leases it runs; the rest it refused."""

    accepted: list[int]
    refused: list[int] = []
    reason: str = ""  # why it refused (no free slot, draining, malformed offer)


class LeaseControl(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Leader → `iris.worker.<worker id>.control`: suspend running leases (their slots go to others) and
    resume suspended ones, by stream sequence."""

    suspend: Annotated[list[int], Meta(max_length=1024)] = []
    resume: Annotated[list[int], Meta(max_length=1024)] = []


class LeaseControlAnswer(msgspec.Struct, frozen=True):
    """Sent once every lease in `suspended` has left the decode batch (its slot is free) and every one in
    `resumed` holds a slot again; `refused`: the rest (not running here, at the suspended bound, no free
    slot to resume into, or ended meanwhile)."""

    suspended: list[int] = []
    resumed: list[int] = []
    refused: list[int] = []
    reason: str = ""


class Heartbeat(msgspec.Struct, frozen=True):
    worker_id: str
    model: str
    slots: int
    free_slots: int
    running: list[int]  # every lease it holds, suspended ones included
    tokens_per_s: float
    sent_ms: int
    gpu: bool = False
    draining: bool = False
    suspended: list[int] = []  # leases it holds suspended (no slot), a subset of `running`
    max_suspended: int = 0  # how many it can hold suspended at once (0: it cannot suspend)
    suspensions: int = 0  # leases it suspended since it started
    resumes: dict[str, int] = {}  # leases it resumed since it started, by mode: kept, restored, reprefilled
    resume_ms: float = 0.0  # mean resume order → decoding again over those


class WorkloadStats(msgspec.Struct, frozen=True):
    """One (model, workload) as the leading broker sees it; shares are of tokens served in the window."""

    model: str
    workload: str
    queued: int
    running: int
    weight: float
    share: float  # of the model's tokens served in the window
    target_share: float  # weight x priority / the sum of it over the model's busy workloads (priority_mode share)
    wait_p50_s: float
    wait_p95_s: float
    started: int  # requests started in the window
    priority: int = 1  # the highest it is serving or has waiting: what multiplies its weight


class RejectionNote(msgspec.Struct, frozen=True):
    at_ms: int
    model: str
    workload: str
    code: str
    message: str


class BrokerStats(msgspec.Struct, frozen=True):
    """Published by the broker every `stats_s` on `iris.broker.stats` (what `iris top` shows)."""

    broker_id: str
    sent_ms: int
    policy: str
    window_s: float
    workloads: list[WorkloadStats]
    rejections: list[RejectionNote]


request_decoder = msgspec.json.Decoder(GenerateRequest)
queue_update_decoder = msgspec.json.Decoder(QueueUpdate)
chunk_decoder = msgspec.json.Decoder(Chunk)
progress_decoder = msgspec.json.Decoder(Progress)
result_decoder = msgspec.json.Decoder(Result)
error_decoder = msgspec.json.Decoder(Error)
lease_decoder = msgspec.json.Decoder(Lease)
lease_offer_decoder = msgspec.json.Decoder(LeaseOffer)
lease_answer_decoder = msgspec.json.Decoder(LeaseAnswer)
lease_control_decoder = msgspec.json.Decoder(LeaseControl)
lease_control_answer_decoder = msgspec.json.Decoder(LeaseControlAnswer)
leases_done_decoder = msgspec.json.Decoder(LeasesDone)
heartbeat_decoder = msgspec.json.Decoder(Heartbeat)
broker_stats_decoder = msgspec.json.Decoder(BrokerStats)
encoder = msgspec.json.Encoder()


class ApiRequest(GenerateRequest, forbid_unknown_fields=True, frozen=True, omit_defaults=True):
    """Body of `iris.api.generate` / `iris.api.chat`: a `GenerateRequest` plus its routing labels."""

    model: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]+$", max_length=128)] | None = None
    workload: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]+$", max_length=128)] = "default"
    priority: Annotated[int, Meta(ge=1, le=100)] = 1
    user: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]+$", max_length=128)] | None = None
    deadline_s: Annotated[float, Meta(gt=0, le=3600)] = 120.0
    idempotency_key: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]+$", max_length=128)] | None = None

    def generate_request(self) -> GenerateRequest:
        fields = {f: getattr(self, f) for f in GenerateRequest.__struct_fields__}
        return GenerateRequest(**fields)


api_request_decoder = msgspec.json.Decoder(ApiRequest)

_Token = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]+$", max_length=128)]


class AdmitRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True, omit_defaults=True):
    """Body of `iris.admit.<model>`: ask for a slot of a model the app calls itself (Aperture `startFlow`)."""

    workload: _Token = "default"
    priority: Annotated[int, Meta(ge=1, le=100)] = 1
    user: _Token | None = None
    tokens: Annotated[int, Meta(ge=1, le=1_000_000)] | None = None  # expected cost; else estimated
    deadline_s: Annotated[float, Meta(gt=0, le=3600)] = 120.0  # give up waiting after this
    ticket_id: _Token | None = None  # idempotency key and the id to release with; generated when absent


class Ticket(msgspec.Struct, frozen=True):
    """A granted slot: the reply to `iris.admit.<model>`. Release it on `iris.admit.end`; it expires by itself
    at `expires_ms` (the model's `max_inflight`)."""

    ticket_id: str
    model: str
    workload: str
    stream_seq: int
    granted_ms: int
    expires_ms: int


class AdmitEnd(msgspec.Struct, forbid_unknown_fields=True, frozen=True, omit_defaults=True):
    """Body of `iris.admit.end`: release a ticket (Aperture `end`), or withdraw an admission still waiting."""

    ticket_id: _Token
    stream_seq: Annotated[int, Meta(ge=0)] = 0  # from the Ticket; 0 when none was granted yet
    # What the call really cost, when the app knows: fairness charges the difference to the estimate.
    prompt_tokens: Annotated[int, Meta(ge=0, le=1_000_000)] = 0
    completion_tokens: Annotated[int, Meta(ge=0, le=1_000_000)] = 0


class AdmitEnded(msgspec.Struct, frozen=True):
    released: bool  # False: no such ticket held (already released, expired, or still waiting: withdrawn)


admit_request_decoder = msgspec.json.Decoder(AdmitRequest)
ticket_decoder = msgspec.json.Decoder(Ticket)
admit_end_decoder = msgspec.json.Decoder(AdmitEnd)
admit_ended_decoder = msgspec.json.Decoder(AdmitEnded)


@dataclass(frozen=True)
class StoredRequest:
    """A request as the stream holds it (read back by sequence): the client's headers and body unchanged."""

    stream_seq: int
    subject: str
    headers: dict[str, str]
    body: bytes
    stored_ms: int
