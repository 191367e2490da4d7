"""Model slots: an `Engine` (llama-cpp-python or the deterministic FakeEngine), the lease runner that
streams an answer and then removes the request, and the service that answers offers and heart-beats."""
