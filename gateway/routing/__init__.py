"""One request to one replica of a loaded model: the pool and its queue, pure balancing, dispatch with retries
before the first byte, and active health checks."""
