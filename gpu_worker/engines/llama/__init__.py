"""llama.cpp through llama-cpp-python: one context whose KV cache is split by sequence, decoded in
batches (continuous batching), with samplers, grammars, logprobs and GPU offload checked at start."""
