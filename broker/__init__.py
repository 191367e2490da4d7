"""The scheduler service: indexes waiting requests from the stream (headers only), decides in pure
`scheduler.Scheduler` who runs next, and hands requests to workers as leases recorded in `IRIS_LEASES`."""
