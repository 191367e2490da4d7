"""Operator tools read from NATS: `iris top` and `iris dlq`."""
