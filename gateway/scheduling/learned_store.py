"""The learned memory peaks, kept in a small JSON file in the state directory so that they survive a restart
(``Settings.learned_path``: ``learned.json`` beside the state file).

The file maps a manifest version (``learned.manifest_version``) to its model's name and its peak resident
bytes per device: ``{"learned": {"<version>": {"model": "...", "peak_bytes": {"host": n}}}}``. Only peaks are
kept: a record below the stored figure changes nothing. Writes go to a temporary file that replaces the old
one (as ``pins``), and only when a peak rose by at least ``WRITE_STEP``, so that sampling a model that grows
page by page does not rewrite the file every few seconds; ``flush`` (at shutdown) writes the smaller rises.
A file that cannot be read is reported and treated as empty (the models learn again), never a reason not to
start.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MAX_BYTES = 1 << 20
MAX_ENTRIES = 1000  # versions kept; the first recorded go first (old versions of edited manifests)
WRITE_STEP = 1 << 20  # a peak that rose by less is kept in memory, and written with the next larger rise


@dataclass
class Entry:
    model: str
    peak: dict[str, int]  # bytes per device

    @property
    def total(self) -> int:
        return sum(self.peak.values())


class LearnedStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, Entry] = self._read()
        self._written: dict[str, int] = {v: e.total for v, e in self.entries.items()}

    def _read(self) -> dict[str, Entry]:
        try:
            if self.path.stat().st_size > MAX_BYTES:
                raise ValueError(f"larger than {MAX_BYTES} bytes")
            data = json.loads(self.path.read_text())
            entries = {}
            for version, e in data["learned"].items():
                peak = e["peak_bytes"]
                if not isinstance(peak, dict) or not all(isinstance(n, int) for n in peak.values()):
                    raise ValueError(f"{version}: 'peak_bytes' must map devices to bytes")
                entries[str(version)] = Entry(str(e["model"]), {str(d): n for d, n in peak.items()})
            return entries
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.error("%s: ignored, models learn their memory footprint again: %s", self.path, exc)
            return {}

    def peak(self, version: str) -> int | None:
        """The peak bytes of a manifest version, all devices together; None before its first load here."""
        entry = self.entries.get(version)
        return entry.total if entry is not None else None

    def record(self, version: str, model: str, measured: Mapping[str, int]) -> bool:
        """Keep ``measured`` (bytes per device) where it is above the stored peak; True if a peak rose."""
        entry = self.entries.setdefault(version, Entry(model, {}))
        rose = False
        for device, n in measured.items():
            if n > entry.peak.get(device, 0):
                entry.peak[device] = n
                rose = True
        if rose and entry.total >= self._written.get(version, 0) + WRITE_STEP:
            self._write()
        return rose

    def flush(self) -> None:
        """Write the peaks that rose since the last write, if any."""
        if any(e.total != self._written.get(v) for v, e in self.entries.items() if e.peak):
            self._write()

    def _write(self) -> None:
        while len(self.entries) > MAX_ENTRIES:
            del self.entries[next(iter(self.entries))]
        data = {v: {"model": e.model, "peak_bytes": e.peak} for v, e in self.entries.items()}
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"learned": data}, indent=2) + "\n")
            os.replace(tmp, self.path)
        except OSError as exc:
            log.error("could not save learned memory peaks to %s (kept until it stops): %s", self.path, exc)
            return
        self._written = {v: e.total for v, e in self.entries.items()}
