"""The `iris` command's groups, one module each: `up`, `submit`, `top`, `dlq`, `bench`; `iris.cli` joins them."""
