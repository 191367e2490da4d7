"""The wire contract every Iris part shares: subjects, headers, messages, error codes, reply-subject rules,
the cancel book, the dead-letter record and the model card. It does no I/O and imports nothing else of Iris;
the service plumbing built on it lives in `runtime`."""
