"""Memory estimate vs. measured RSS growth of a loaded model.

Each case runs in a fresh subprocess: RSS before the load (llama_cpp already imported), then RSS after the
load and a generation whose prompt fills the context (so that the mapped weights, the whole KV cache and the
compute buffers are touched: the worst case a budget must cover). Target:
within +-15%, and never under by more than 10%.

    python bench/estimate_accuracy.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backends.gguf.memory import MiB, estimate_llama_cpp, read_gguf_info  # noqa: E402
from backends.llama_cpp.spec import LlamaCppBackend  # noqa: E402
from tests.synthetic_gguf import Shape, write_model  # noqa: E402

CHILD = r"""
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
import llama_cpp
from backends.llama_cpp.spec import LlamaCppBackend
from backends.llama_cpp.replica import build_llama
def rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
spec = LlamaCppBackend.model_validate_json(sys.argv[1])
before = rss()
engines = [build_llama(spec, 2) for _ in range(spec.parallel)]
for e in engines:
    # The worst case the estimate must cover: a prompt that fills the context, in full batches.
    words = e.tokenize(b" hello", add_bos=False)
    fill = (words * spec.n_ctx)[: spec.n_ctx - 16]
    if spec.embeddings:
        e.embed([e.detokenize(fill).decode(errors="ignore")], truncate=True)
    else:
        e.create_completion(fill, max_tokens=8)
print(json.dumps({"growth": rss() - before}))
"""


def measure(spec: LlamaCppBackend) -> int:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, spec.model_dump_json(), str(ROOT)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return int(json.loads(out.strip().splitlines()[-1])["growth"])


def cases(tmp: Path) -> list[tuple[str, LlamaCppBackend]]:
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
    return out


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for label, spec in cases(Path(tmp)):
            est = estimate_llama_cpp(read_gguf_info(spec.model), spec, spec.parallel).total
            got = measure(spec)
            rows.append((label, est, got, (est - got) / got * 100))
    print("| case | estimate MiB | measured RSS growth MiB | error |")
    print("|---|---:|---:|---:|")
    for label, est, got, err in rows:
        print(f"| {label} | {est / MiB:.1f} | {got / MiB:.1f} | {err:+.1f}% |")


if __name__ == "__main__":
    main()
