"""What an import finds and says: the planned manifests and the issues (``Conversion``), what writing them
did (``WriteResult``), and the report printed from both."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Kind = Literal["not carried", "warning", "note"]


@dataclass(frozen=True)
class Issue:
    file: Path
    model: str  # the model's id in the source ("" for a server-wide setting), or the manifest's name
    setting: str
    why: str
    kind: Kind = "not carried"


@dataclass
class Planned:
    name: str
    origins: list[str]  # the source's ids of the models merged into this manifest
    doc: dict[str, Any]
    comments: list[str] = field(default_factory=list)


@dataclass
class Conversion:
    source: Path
    format: str
    models: list[Planned] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)

    def issue(self, model: str, setting: str, why: str, kind: Kind = "not carried") -> None:
        self.issues.append(Issue(self.source, model, setting, why, kind))


@dataclass
class WriteResult:
    written: dict[Path, Planned] = field(default_factory=dict)
    existing: list[Path] = field(default_factory=list)  # refused without force: then nothing is written
    issues: list[Issue] = field(default_factory=list)


def report(conv: Conversion, result: WriteResult, out: Path) -> str:
    lines = [
        f"{conv.source} ({conv.format}): {len(result.written)} of {len(conv.models)} manifests written "
        f"to {out}"
    ]
    for path, planned in result.written.items():
        aliases = ", ".join(planned.doc.get("aliases", [])) or "-"
        lines.append(f"  {path}  {planned.name}  {planned.doc['backend']['kind']}  aliases: {aliases}")
    issues = conv.issues + result.issues
    for kind, title in (("not carried", "Not carried over"), ("warning", "Warnings"), ("note", "Notes")):
        chosen = [i for i in issues if i.kind == kind]
        if not chosen:
            continue
        lines.append(f"{title} ({len(chosen)}): file, model, setting, why")
        cells = [[str(i.file), i.model or "-", i.setting or "-"] for i in chosen]
        widths = [max(len(row[c]) for row in cells) for c in range(3)]
        for row, i in zip(cells, chosen, strict=True):
            lines.append(
                "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + "  " + i.why
            )
    return "\n".join(lines)
