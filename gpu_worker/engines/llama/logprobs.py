"""Log-probabilities of sampled tokens, from the raw logits of the step that produced them.

As llama.cpp's server reports them (`n_probs`): a softmax over the model's logits before any sampling
stage (logit bias, grammar, top-k, temperature), so they describe the model, not the sampler, and the
alternatives are the model's most likely tokens. Computed only for sequences that asked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from schemas.messages import TokenLogprob, TopLogprob


def token_logprob(logits: Any, n_vocab: int, token: int, top_n: int, text_of: Callable[[int], str]) -> TokenLogprob:
    """`logits`: the ctypes float pointer llama.cpp returns for the step's row."""
    row = np.ctypeslib.as_array(logits, shape=(n_vocab,)).astype(np.float64)
    peak = row.max()
    log_total = peak + np.log(np.exp(row - peak).sum())
    logprob = float(row[token] - log_total)
    top: list[TopLogprob] = []
    if top_n > 0:
        best = np.argpartition(row, -top_n)[-top_n:]
        best = best[np.argsort(row[best])[::-1]]
        top = [TopLogprob(text_of(int(t)), float(row[t] - log_total)) for t in best]
    return TokenLogprob(text_of(token), logprob, top)
