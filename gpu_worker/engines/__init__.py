"""Engines behind one Protocol (`protocol.Engine`): llama.cpp in-process, a deterministic fake for tests,
and an HTTP engine that forwards to an Ollama / OpenAI-compatible server."""
