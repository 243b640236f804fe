"""Writing the planned manifests to ``--out``, once the gateway's own loader accepts them in a scratch
directory and their names clash with none already there; what the loader then says about the written files
is part of the result."""

from __future__ import annotations

import re
from pathlib import Path
from tempfile import TemporaryDirectory

import yaml

from gateway.cli.importing.report import Conversion, Issue, Planned, WriteResult
from gateway.config.loading import load_directory, load_file


def render(planned: Planned) -> str:
    head = "".join(f"# {line}\n" for line in planned.comments)
    return head + yaml.safe_dump(
        planned.doc, sort_keys=False, allow_unicode=True, width=110, default_flow_style=None
    )


def _file_missing(reason: str) -> bool:
    return "file not found" in reason


def write(conv: Conversion, out: Path, *, force: bool = False) -> WriteResult:
    result = WriteResult()
    targets = _filenames(conv)
    existing = [out / f for f in targets if (out / f).exists()]
    if existing and not force:
        result.existing = existing
        return result
    refused = _refused_by_loader(targets, out, result)
    _refuse_name_clashes(targets, out, refused, result)
    out.mkdir(parents=True, exist_ok=True)
    for filename, planned in targets.items():
        if filename not in refused:
            (out / filename).write_text(render(planned))
            result.written[out / filename] = planned
    _report_written(out, result)
    return result


def _filenames(conv: Conversion) -> dict[str, Planned]:
    targets: dict[str, Planned] = {}
    for planned in conv.models:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "-", planned.name)
        filename, n = f"{stem}.yaml", 2
        while filename in targets:
            filename, n = f"{stem}-{n}.yaml", n + 1
        targets[filename] = planned
    return targets


def _refused_by_loader(targets: dict[str, Planned], out: Path, result: WriteResult) -> set[str]:
    # The gateway's loader judges every manifest before any lands in `out`.
    with TemporaryDirectory() as scratch:
        for filename, planned in targets.items():
            (Path(scratch) / filename).write_text(render(planned))
        staged = load_directory(Path(scratch))
    refused = {p.file.name for p in staged.problems if not _file_missing(p.reason)}
    for p in staged.problems:
        if p.file.name in refused:
            result.issues.append(
                Issue(
                    out / p.file.name,
                    targets[p.file.name].name,
                    p.field,
                    f"the gateway would refuse it ({p.reason.removeprefix('Value error, ')}): not written",
                )
            )
    return refused


def _refuse_name_clashes(
    targets: dict[str, Planned], out: Path, refused: set[str], result: WriteResult
) -> None:
    # Names must not clash with the manifests already in `out` either.
    declared: dict[str, Path] = {}
    for other in sorted([*out.glob("*.yaml"), *out.glob("*.yml")]) if out.is_dir() else []:
        if other.name not in targets:
            for item in load_file(other).models:
                for name in (item.manifest.name, *item.manifest.aliases):
                    declared[name] = other
    for filename, planned in targets.items():
        clash = next((n for n in (planned.name, *planned.doc.get("aliases", [])) if n in declared), None)
        if clash is not None and filename not in refused:
            refused.add(filename)
            result.issues.append(
                Issue(
                    out / filename,
                    planned.name,
                    "name",
                    f"'{clash}' is already declared in {declared[clash]}: not written",
                )
            )


def _report_written(out: Path, result: WriteResult) -> None:
    # What the gateway will make of the written files.
    for p in load_directory(out).problems:
        planned_for = result.written.get(out / p.file.name)
        if planned_for is not None:
            missing = _file_missing(p.reason)
            reason = p.reason.removeprefix("Value error, ")
            why = f"{reason}: the gateway refuses this manifest until it exists" if missing else reason
            result.issues.append(
                Issue(p.file, planned_for.name, p.field, why, "warning" if missing else "not carried")
            )
