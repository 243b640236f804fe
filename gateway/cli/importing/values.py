"""Source values to manifest values, shared by both converters: file paths, the training context a 0 means,
model names, and the manifest document."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from backends.gguf.reader import read_metadata
from gateway.cli.importing.report import Conversion
from gateway.config.manifest import NAME_PATTERN

VALID_NAME = re.compile(NAME_PATTERN)


def local_path(value: str, base: Path) -> Path:
    """A file the source names: relative paths were relative to the server's working directory, taken to
    be the config's directory (then this one); the manifest gets an absolute path."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    for root in (base, Path.cwd()):
        if (root / path).is_file():
            return (root / path).resolve()
    return (base / path).resolve()


def _train_ctx(path: Path) -> int | None:
    try:
        meta = read_metadata(path)
    except (OSError, ValueError):
        return None
    value = meta.get(f"{meta.get('general.architecture')}.context_length")
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 16 else None


def ctx_from_model(conv: Conversion, origin: str, setting: str, model: Path) -> int | None:
    ctx = _train_ctx(model)
    if ctx is None:
        conv.issue(
            origin,
            setting,
            "0 means the model's training context, which could not be read from "
            f"{model}: the gateway's default n_ctx (4096) applies; set n_ctx",
            "warning",
        )
    else:
        conv.issue(
            origin, setting, f"0 means the model's training context: n_ctx {ctx} (from the GGUF)", "note"
        )
    return ctx


def show(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def slugify(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._:/\-]+", "-", text).strip("-")
    return re.sub(r"^[^A-Za-z0-9]+", "", slug) or "model"


def manifest_doc(name: str, aliases: list[str], description: str, backend: dict[str, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": name}
    if aliases:
        doc["aliases"] = aliases
    if description:
        doc["description"] = description
    doc["backend"] = backend
    return doc
