"""The HTTP edge: one Starlette app speaking the Ollama and OpenAI dialects, its guard (Host, Origin, body
size, content type) and the streaming of queue feedback."""
