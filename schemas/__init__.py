"""The wire contract every Iris part shares: subjects, headers, messages, error codes, and the few
JetStream operations and client exchange built directly on them. Nothing here imports another part."""
