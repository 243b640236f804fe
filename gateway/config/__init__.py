"""Configuration: the settings (``GATEWAY_*``, flags), the manifest schema composed from each backend kind's
spec, and reading ``manifests/*.yaml`` with errors that name the file and field."""
