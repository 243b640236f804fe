"""Kind ``remote``: existing OpenAI-compatible servers; each endpoint is a replica, nothing is launched."""
