"""Pins set through the admin API, kept in a small JSON file so that they survive a reload and a restart.

The file holds the operator's overrides only, ``{"pinned": {"<model>": true|false}}``: a model with no entry
follows its manifest's ``pinned``. Writes go to a temporary file that replaces the old one, so a crash never
leaves half a file; a file that cannot be read is reported and treated as empty (the manifests still say
what to pin), never a reason not to start.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

MAX_BYTES = 1 << 20


class Pins:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.overrides: dict[str, bool] = self._read()

    def _read(self) -> dict[str, bool]:
        try:
            if self.path.stat().st_size > MAX_BYTES:
                raise ValueError(f"larger than {MAX_BYTES} bytes")
            data = json.loads(self.path.read_text())
            pinned = data["pinned"]
            if not isinstance(pinned, dict) or not all(isinstance(v, bool) for v in pinned.values()):
                raise ValueError("'pinned' must map model names to true or false")
            return {str(k): v for k, v in pinned.items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("%s: ignored, pins set through the admin API are lost: %s", self.path, exc)
            return {}

    def pinned(self, model: str, manifest_says: bool) -> bool:
        return self.overrides.get(model, manifest_says)

    def record(self, model: str, pinned: bool) -> None:
        self.overrides[model] = pinned
        self._write()

    def forget(self, models: frozenset[str] | set[str]) -> None:
        """Drop the overrides of models that are no longer declared."""
        if models & self.overrides.keys():
            for name in models:
                self.overrides.pop(name, None)
            self._write()

    def _write(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"pinned": self.overrides}, indent=2, sort_keys=True) + "\n")
            os.replace(tmp, self.path)
        except OSError as exc:
            log.error("could not save pins to %s (they hold until the gateway stops): %s", self.path, exc)
