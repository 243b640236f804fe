"""Reading ``manifests/*.yaml`` into validated ``ModelManifest`` objects.

One bad file, or one bad model in a file, never stops the others: each problem becomes a ``ManifestProblem``
naming the file, the field path and the reason, and every valid model is still returned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from backends.kinds import Kinds
from gateway.config.manifest import ModelManifest, default_kinds


@dataclass(frozen=True)
class ManifestProblem:
    file: Path
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.field}: {self.reason}" if self.field else f"{self.file}: {self.reason}"


@dataclass(frozen=True)
class LoadedManifest:
    manifest: ModelManifest
    file: Path


@dataclass
class ManifestSet:
    models: list[LoadedManifest] = field(default_factory=list)
    problems: list[ManifestProblem] = field(default_factory=list)


def _field_path(loc: tuple[int | str, ...], prefix: str, kinds: Kinds) -> str:
    parts = [prefix] if prefix else []
    for i, item in enumerate(loc):
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1]}[{item}]"] if parts else [f"[{item}]"]
        elif not _union_tag(loc, i, kinds):
            parts.append(str(item))
    return ".".join(parts)


def _union_tag(loc: tuple[int | str, ...], i: int, kinds: Kinds) -> bool:
    """pydantic puts a discriminated union's tag in the path: the kind after "backend", and the tag of a
    kind's own union (a container's preset) after that. They are not fields."""
    if i > 0 and loc[i - 1] == "backend" and loc[i] in kinds.names():
        return True
    kind = kinds.get(str(loc[i - 1])) if i > 1 and loc[i - 2] == "backend" else None
    return kind is not None and loc[i] in kind.tags


def _documents(raw: Any) -> list[tuple[str, Any]]:
    """Split a file into (field prefix, model document) pairs."""
    if isinstance(raw, dict) and set(raw) == {"models"} and isinstance(raw["models"], list):
        if not raw["models"]:
            return [("models", None)]
        return [(f"models[{i}]", doc) for i, doc in enumerate(raw["models"])]
    return [("", raw)]


def load_file(path: Path, kinds: Kinds | None = None) -> ManifestSet:
    kinds = kinds or default_kinds()
    result = ManifestSet()
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        result.problems.append(ManifestProblem(path, "", f"cannot read YAML: {exc}"))
        return result
    if raw is None:
        result.problems.append(ManifestProblem(path, "", "the file is empty"))
        return result
    for prefix, doc in _documents(raw):
        if not isinstance(doc, dict):
            reason = "the list declares no models" if doc is None else "expected a mapping of model fields"
            result.problems.append(ManifestProblem(path, prefix, reason))
            continue
        try:
            model = ModelManifest.model_validate(doc, context={"base_dir": path.parent, "kinds": kinds})
        except ValidationError as exc:
            for err in exc.errors():
                result.problems.append(
                    ManifestProblem(path, _field_path(err["loc"], prefix, kinds), err["msg"])
                )
            continue
        result.models.append(LoadedManifest(model, path))
    return result


def load_directory(directory: Path, kinds: Kinds | None = None) -> ManifestSet:
    """Validate every ``*.yaml``/``*.yml`` file; names and aliases must be unique across all of them."""
    result = ManifestSet()
    if not directory.is_dir():
        result.problems.append(ManifestProblem(directory, "", "manifest directory not found"))
        return result
    files = sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])
    owners: dict[str, Path] = {}
    for path in files:
        loaded = load_file(path, kinds)
        result.problems.extend(loaded.problems)
        for item in loaded.models:
            names = [item.manifest.name, *item.manifest.aliases]
            clash = next((n for n in names if n in owners), None)
            if clash is not None:
                where = "name" if clash == item.manifest.name else "aliases"
                result.problems.append(
                    ManifestProblem(path, where, f"'{clash}' is already declared in {owners[clash]}")
                )
                continue
            for n in names:
                owners[n] = path
            result.models.append(item)
    return result
