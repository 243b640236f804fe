"""The ``llm-gateway`` command: serve, check, the operator commands against a running gateway, import of other
tools' configs, fetching the default model and building llama-server."""

from gateway.cli.main import main

__all__ = ["main"]
