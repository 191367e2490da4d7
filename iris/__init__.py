"""What a user imports or types: the Python client (`from iris import Client`, in `sdk/`), the `iris` CLI
(`cli.py`), the `iris up` launcher (`launch/`), the operator tools (`ops/`) and the benchmarks (`bench/`)."""

from iris.sdk.client import Client, DuplicateRequest, Generation

__all__ = ["Client", "DuplicateRequest", "Generation"]
