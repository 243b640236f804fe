"""Docker hosts: one Docker Engine API endpoint (``engine``), and one container on it (``container``): create,
follow its log, read its exit, remove. Used by the kinds that run containers."""
