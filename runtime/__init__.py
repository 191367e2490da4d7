"""What every Iris service process runs on: the NATS connection, start/stop on signals, logs, the metrics
endpoint, config loading, the raw stream operations, the client exchange, the cancel feed, the move to the
dead letters and the clock. It imports `schemas` and nothing else of Iris."""
