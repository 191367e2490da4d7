"""The broker's pure core: synchronous decision logic, clock passed in, no I/O.

`tests/unit/broker/test_core_purity.py` holds it: no module here imports nats, asyncio, a clock or a file API,
nor any broker module outside this folder."""
