"""``convert``: the source read, its format recognised and handed to that format's converter, names made
unique across the import, and each manifest's header comments."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from gateway.cli.importing.llama_cpp_python import plan_llama_cpp_python
from gateway.cli.importing.llama_swap import plan_llama_swap
from gateway.cli.importing.report import Conversion
from gateway.cli.importing.source import SourceError, one_line, read_source

Format = Literal["auto", "llama-cpp-python", "llama-swap"]


def convert(path: Path, fmt: Format = "auto", env: Mapping[str, str] | None = None) -> Conversion:
    """Plan the manifests for ``path``. Raises ``SourceError`` for an unreadable or unrecognised source."""
    raw = read_source(path)
    models = raw.get("models")
    found = (
        "llama-cpp-python" if isinstance(models, list) else "llama-swap" if isinstance(models, dict) else None
    )
    if found is None or (fmt != "auto" and fmt != found):
        expected = {"auto": "a `models:` list (llama-cpp-python) or map (llama-swap)"}.get(
            fmt, "a `models:` list" if fmt == "llama-cpp-python" else "a `models:` map"
        )
        raise SourceError(f"{path}: not a {fmt if fmt != 'auto' else 'known'} config: expected {expected}")
    if not models:
        raise SourceError(f"{path}: declares no models")
    conv = Conversion(path, found)
    try:
        if found == "llama-cpp-python":
            plan_llama_cpp_python(raw, conv)
        else:
            plan_llama_swap(raw, conv, os.environ if env is None else env)
    except SourceError:
        raise
    except (ValueError, TypeError, AttributeError) as exc:  # a value of the wrong type, e.g. ttl: soon
        raise SourceError(f"{path}: not a valid {found} config: {one_line(exc)}") from exc
    _dedupe(conv)
    for planned in conv.models:
        header = (
            f"Imported by `llm-gateway import` from {path.resolve()} ({found}: {', '.join(planned.origins)})."
        )
        dropped = [i for i in conv.issues if i.model in planned.origins and i.kind != "note"]
        planned.comments[:0] = [header] + [f"{i.kind}: {i.setting}: {i.why}" for i in dropped]
    return conv


def _dedupe(conv: Conversion) -> None:
    """Names and aliases must be unique across the import (the loader refuses a clash)."""
    taken: set[str] = set()
    for planned in conv.models:
        name = planned.name
        n = 2
        while name in taken:
            name, n = f"{planned.name}-{n}", n + 1
        if name != planned.name:
            conv.issue(planned.origins[0], "name", f"'{planned.name}' is taken: named '{name}'", "warning")
            planned.name = planned.doc["name"] = name
        taken.add(name)
        kept = []
        for alias in planned.doc.get("aliases", []):
            if alias in taken:
                conv.issue(planned.origins[0], f"alias {alias}", "already a name or alias of another model")
            else:
                taken.add(alias)
                kept.append(alias)
        if kept:
            planned.doc["aliases"] = kept
        else:
            planned.doc.pop("aliases", None)
