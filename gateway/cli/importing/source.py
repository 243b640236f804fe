"""Reading the source config: JSON by its suffix, YAML otherwise, and a mapping at the top level."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml


class SourceError(ValueError):
    """The source cannot be read or is not a config of the expected kind; the message is one line."""


def one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def read_source(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"{path}: cannot read: {one_line(exc)}") from exc
    try:
        raw = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        what = "JSON" if path.suffix.lower() == ".json" else "YAML"
        raise SourceError(f"{path}: not valid {what}: {one_line(exc)}") from exc
    if not isinstance(raw, dict):
        raise SourceError(f"{path}: expected a mapping with `models:` at the top level")
    return raw
