"""One llama.cpp sampler chain per sequence, built from the request's sampling fields.

Order, as llama.cpp's own server chains them: logit bias → grammar (structured output) → repetition
penalties → greedy, or top-k → top-p → min-p → temperature → seeded draw. The grammar comes before
anything that cuts the candidate list, so a token the grammar forbids can never be drawn, and the chain
accepts every sampled token into each stage (grammar state and penalty history are per sequence).
Unset fields take llama.cpp's defaults (top-k 40, min-p 0.05, no penalties).
"""

from __future__ import annotations

import ctypes
import math
from typing import Any

from gpu_worker.engines.llama.grammar import output_grammar
from gpu_worker.engines.protocol import EngineInputError
from schemas.messages import GenerateRequest

DEFAULT_TOP_K = 40
DEFAULT_MIN_P = 0.05
DEFAULT_REPEAT_LAST_N = 64  # Ollama's default window for the repetition penalties
_RANDOM_SEED = 0xFFFFFFFF  # llama.cpp: a random seed
SHORTLIST = 1024  # tokens a grammar checks first (see `SequenceSampler`)
_TOKEN_DATA = [("id", "<i4"), ("logit", "<f4"), ("p", "<f4")]  # struct llama_token_data


class SequenceSampler:
    """Samples one sequence's next token. Without a grammar that is `llama_sampler_sample` on the chain.
    With one, checking all of a 262k vocabulary against the grammar costs ~0.1 s a step on a CPU, so the
    grammar first filters a shortlist of the `SHORTLIST` most likely tokens (raw logits). When at least
    `top_k` of them pass (1 when greedy), the chain's top-k keeps exactly the tokens it would have kept
    from the whole filtered vocabulary (every token outside the shortlist ranks lower), so the draw is
    the same as a full one; when fewer pass but every token outside is so far below the best that min-p
    drops it, only top-p's normalisation could differ, by the mass of tokens min-p drops anyway. Otherwise,
    and whenever a logit bias or penalty could reorder the logits or top-k is off, the grammar filters
    the whole vocabulary."""

    def __init__(self, chain: Any, grammar: Any, n_vocab: int, shortlist_need: int, min_p: float) -> None:
        import numpy as np

        self.chain, self.grammar, self.n_vocab = chain, grammar, n_vocab
        self.shortlist_need = shortlist_need  # passing tokens the shortlist must hold; 0 = never use it
        # min-p drops every token this far (in raw logits) below the best one: those cannot be drawn
        self.cut_below = math.log(1 / min_p) if min_p > 0 else math.inf
        self._candidates = np.zeros(n_vocab if grammar else 0, dtype=_TOKEN_DATA)
        self._shortlist = np.zeros(min(SHORTLIST, n_vocab) if grammar else 0, dtype=_TOKEN_DATA)

    def sample(self, ctx: Any, logits_index: int) -> int:
        import llama_cpp.llama_cpp as llama
        import numpy as np

        if not self.grammar:
            return int(llama.llama_sampler_sample(self.chain, ctx, logits_index))
        logits = np.ctypeslib.as_array(llama.llama_get_logits_ith(ctx, logits_index), shape=(self.n_vocab,))
        token = self._from_shortlist(logits) if self.shortlist_need else None
        if token is None:
            token = self._from_all(logits)
        llama.llama_sampler_accept(self.grammar, token)
        llama.llama_sampler_accept(self.chain, token)
        return token

    def _from_shortlist(self, logits: Any) -> int | None:
        import numpy as np

        shortlist = self._shortlist
        ids = np.argpartition(logits, -len(shortlist))[-len(shortlist) :]
        shortlist["id"], shortlist["logit"], shortlist["p"] = ids, logits[ids], 0.0
        floor = float(shortlist["logit"].min())  # every token outside the shortlist is at most this
        array = _token_array(shortlist)
        _apply(self.grammar, array)
        passed = shortlist["logit"][np.isfinite(shortlist["logit"])]
        if len(passed) == 0:
            return None
        if len(passed) < self.shortlist_need and floor > float(passed.max()) - self.cut_below:
            return None  # tokens outside could still be drawn: check them all
        return self._select(array)

    def _from_all(self, logits: Any) -> int:
        import numpy as np

        candidates = self._candidates
        candidates["id"] = np.arange(self.n_vocab, dtype=np.int32)
        candidates["logit"], candidates["p"] = logits, 0.0
        array = _token_array(candidates)
        _apply(self.grammar, array)
        return self._select(array)

    def _select(self, array: Any) -> int:
        _apply(self.chain, array)
        if array.selected < 0:
            raise RuntimeError("the sampler chain selected no token")
        return int(array.data[array.selected].id)  # stages sort and shrink in place: read through the array

    def accept(self, token: int) -> None:
        """A token sampled elsewhere (an earlier attempt): the grammar and penalty history take it in."""
        import llama_cpp.llama_cpp as llama

        if self.grammar:
            llama.llama_sampler_accept(self.grammar, token)
        llama.llama_sampler_accept(self.chain, token)

    def free(self) -> None:
        import llama_cpp.llama_cpp as llama

        for sampler in (self.chain, self.grammar):
            if sampler:
                llama.llama_sampler_free(sampler)
        self.chain = self.grammar = None


def _apply(sampler: Any, array: Any) -> None:
    import llama_cpp.llama_cpp as llama

    llama.llama_sampler_apply(sampler, ctypes.byref(array))


def make_sampler(request: GenerateRequest, vocab: Any, context_tokens: int) -> SequenceSampler:
    """A sampler for `request`; `EngineInputError` names a field this model cannot take.
    `context_tokens`: the slot's context, the window of `repeat_last_n: -1`."""
    import llama_cpp.llama_cpp as llama

    n_vocab = llama.llama_vocab_n_tokens(vocab)
    grammar = _grammar(request, vocab)
    chain = llama.llama_sampler_chain_init(llama.llama_sampler_chain_default_params())
    try:
        for stage in _stages(request, n_vocab, context_tokens):
            llama.llama_sampler_chain_add(chain, stage)
    except BaseException:
        llama.llama_sampler_free(chain)  # frees the stages already added
        if grammar:
            llama.llama_sampler_free(grammar)
        raise
    min_p = 0.0 if request.temperature == 0 else DEFAULT_MIN_P if request.min_p is None else request.min_p
    return SequenceSampler(chain, grammar, n_vocab, _shortlist_need(request), min_p)


def _shortlist_need(request: GenerateRequest) -> int:
    """How many tokens a grammar shortlist must pass for its draw to equal a full one; 0: never exact."""
    if request.logit_bias or _penalties(request, 0) is not None:
        return 0  # they move logits after the shortlist was cut by raw logits
    if request.temperature == 0:
        return 1
    top_k = DEFAULT_TOP_K if request.top_k is None else request.top_k
    return top_k if 0 < top_k <= SHORTLIST else 0


def _grammar(request: GenerateRequest, vocab: Any) -> Any:
    import llama_cpp.llama_cpp as llama

    if request.response_format is None:
        return None
    grammar = llama.llama_sampler_init_grammar(vocab, output_grammar(request.response_format).encode(), b"root")
    if not grammar:
        raise EngineInputError("response_format: llama.cpp could not parse the grammar of this schema")
    return grammar


def _token_array(candidates: Any) -> Any:
    import llama_cpp.llama_cpp as llama

    data = ctypes.cast(candidates.ctypes.data, ctypes.POINTER(llama.llama_token_data))
    return llama.llama_token_data_array(data=data, size=len(candidates), selected=-1, sorted=False)


def _stages(request: GenerateRequest, n_vocab: int, context_tokens: int) -> list[Any]:
    import llama_cpp.llama_cpp as llama

    stages = []
    if request.logit_bias:
        stages.append(_logit_bias(request.logit_bias, n_vocab))
    penalties = _penalties(request, context_tokens)
    if penalties is not None:
        stages.append(llama.llama_sampler_init_penalties(n_vocab, *penalties))
    if request.temperature == 0:
        return [*stages, llama.llama_sampler_init_greedy()]
    top_k = DEFAULT_TOP_K if request.top_k is None else request.top_k
    min_p = DEFAULT_MIN_P if request.min_p is None else request.min_p
    seed = _RANDOM_SEED if request.seed is None else request.seed
    if top_k > 0:
        stages.append(llama.llama_sampler_init_top_k(top_k))
    stages.append(llama.llama_sampler_init_top_p(request.top_p, 1))
    if min_p > 0:
        stages.append(llama.llama_sampler_init_min_p(min_p, 1))
    stages.append(llama.llama_sampler_init_temp(request.temperature))
    stages.append(llama.llama_sampler_init_dist(seed))
    return stages


def _penalties(request: GenerateRequest, context_tokens: int) -> tuple[int, float, float, float] | None:
    """(last_n, repeat, frequency, presence), or None when every penalty is off."""
    repeat = 1.0 if request.repeat_penalty is None else request.repeat_penalty
    frequency = request.frequency_penalty or 0.0
    presence = request.presence_penalty or 0.0
    if repeat == 1.0 and frequency == 0.0 and presence == 0.0:
        return None
    if repeat <= 0.0:
        raise EngineInputError("repeat_penalty must be > 0 (1.0 = off)")
    last_n = DEFAULT_REPEAT_LAST_N if request.repeat_last_n is None else request.repeat_last_n
    if last_n < 0:
        last_n = context_tokens
    return last_n, repeat, frequency, presence


def _logit_bias(bias: dict[int, float], n_vocab: int) -> Any:
    import llama_cpp.llama_cpp as llama

    outside = sorted(token for token in bias if token >= n_vocab)
    if outside:
        raise EngineInputError(f"logit_bias: token ids {outside[:5]} are outside this model's vocabulary of {n_vocab}")
    entries = (llama.llama_logit_bias * len(bias))()
    for entry, (token, value) in zip(entries, sorted(bias.items()), strict=True):
        entry.token, entry.bias = token, value
    return llama.llama_sampler_init_logit_bias(n_vocab, len(bias), ctypes.cast(entries, llama.llama_logit_bias_p))
