"""The gateway: one OpenAI-compatible endpoint in front of many models. Layers, top to bottom (each imports
only the ones below it; ``tests/test_layers.py`` checks): ``cli`` -> ``http`` -> ``control`` ->
``observability`` -> ``api`` -> ``scheduling`` -> ``routing`` -> ``resources`` -> ``config`` ->
``backends``."""
