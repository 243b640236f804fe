"""Reload triggers on a real ``llm-gateway serve`` process: SIGHUP, and ``--watch`` on the manifest directory;
and the pure parts of reload and log following."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from gateway.config.loading import LoadedManifest, ManifestProblem, ManifestSet
from gateway.control.reload import diff
from gateway.http.admin_routes import new_lines
from tests.conftest import ROOT, free_port, llama_manifest, wait_for, write_manifests


def serve(directory: Path, *flags: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--manifests", str(directory), "--port", str(port),
         "--log-level", "warning", *flags],
        cwd=ROOT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _up(base), "the gateway to start")
        yield base, proc
    finally:
        proc.terminate()
        proc.wait(30)


def _up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def models(base: str) -> set[str]:
    return {m["id"] for m in httpx.get(f"{base}/v1/models", timeout=10).json()["data"]}


@pytest.fixture
def directory(tmp_path: Path, model_files: dict[str, Path]) -> Path:
    return write_manifests(tmp_path / "manifests", [llama_manifest("a", model_files["a"])])


def test_sighup_reloads(directory: Path, model_files: dict[str, Path]) -> None:
    gen = serve(directory)
    base, proc = next(gen)
    try:
        (directory / "b.yaml").write_text(yaml.safe_dump(llama_manifest("b", model_files["b"])))
        assert models(base) == {"a"}  # not without a signal: this gateway does not watch
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: models(base) == {"a", "b"}, "SIGHUP to reload the manifests")
    finally:
        gen.close()


def test_watch_reloads_on_a_changed_file(directory: Path, model_files: dict[str, Path]) -> None:
    gen = serve(directory, "--watch")
    base, _ = next(gen)
    try:
        (directory / "b.yaml").write_text(yaml.safe_dump(llama_manifest("b", model_files["b"])))
        wait_for(lambda: models(base) == {"a", "b"}, "the watch to add b")
        (directory / "a.yaml").unlink()
        wait_for(lambda: models(base) == {"b"}, "the watch to remove a")
    finally:
        gen.close()


def _loaded(name: str, file: str, **extra: object) -> LoadedManifest:
    from gateway.config.manifest import ModelManifest

    doc = llama_manifest(name, Path(__file__), **extra)
    return LoadedManifest(ModelManifest.model_validate(doc), Path(file))


def test_diff_sorts_models_into_added_removed_changed_unchanged_and_kept() -> None:
    old = [_loaded("a", "a.yaml"), _loaded("b", "b.yaml"), _loaded("c", "c.yaml"), _loaded("d", "d.yaml")]
    fresh = ManifestSet(
        [_loaded("a", "a.yaml"), _loaded("b", "b.yaml", aliases=["bee"]), _loaded("e", "e.yaml")],
        [ManifestProblem(Path("d.yaml"), "backend.n_ctx", "not an integer")],
    )
    d = diff(old, fresh)
    assert [m.manifest.name for m in d.added] == ["e"]
    assert d.removed == ("c",)  # its file is gone
    assert [m.manifest.name for m in d.changed] == ["b"]
    assert d.unchanged == ("a",)
    assert [m.manifest.name for m in d.kept] == ["d"]  # its file is broken: the old version stays
    assert sorted(m.manifest.name for m in d.manifests().models) == ["a", "b", "d", "e"]


def test_new_lines_of_a_rolling_log_tail() -> None:
    assert new_lines((), ("1", "2")) == ["1", "2"]
    assert new_lines(("1", "2"), ("1", "2", "3")) == ["3"]
    assert new_lines(("1", "2", "3"), ("2", "3", "4", "5")) == ["4", "5"]  # the tail dropped its oldest
    assert new_lines(("1", "2"), ("1", "2")) == []
    assert new_lines(("x", "y"), ("1", "2")) == ["1", "2"]  # nothing in common: all of it is new
