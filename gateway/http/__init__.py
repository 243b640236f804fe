"""The HTTP edge: the ASGI app and its lifespan, the routes of ``/v1`` and ``/admin``, auth, the server's
limits, the streaming relay, the OpenAPI document, and errors mapped to their response shape."""
