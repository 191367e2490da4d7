"""What a user imports or types: the Python client (`iris.client.Client`), the `iris` CLI, the `iris up`
launcher and the benchmarks."""

from iris.client import Client, DuplicateRequest, Generation

__all__ = ["Client", "DuplicateRequest", "Generation"]
