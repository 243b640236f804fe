"""Backends: what runs a model. At the top, what every kind shares: the narrow interface (``base``), the
exception tree (``errors``), the kind registry (``kinds``), the demand vocabulary (``demand``), the HTTP
upstream client (``upstream``), one supervisor for processes and containers (``supervisor``), GGUF files
(``gguf``) and Docker hosts (``docker``). Then one package per kind: ``llama_cpp``, ``llama_server``,
``container``, ``remote``. Nothing here imports ``gateway``."""
