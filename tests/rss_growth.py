"""RSS growth of one model's engines, measured in a fresh process: shared by ``bench/estimate_accuracy.py``
and the estimate's tests.

The child records its RSS (llama_cpp already imported), builds ``parallel`` engines the way the gateway does
(``build_llama``), then runs a prompt that fills each context, in full batches (so that the mapped weights,
the whole KV cache and the compute buffers are touched: the worst case a budget must cover), and prints the
growth.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from backends.llama_cpp.spec import LlamaCppBackend

ROOT = Path(__file__).resolve().parents[1]

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
loaded = rss() - before
for e in engines:
    words = e.tokenize(b" hello", add_bos=False)
    fill = (words * spec.n_ctx)[: spec.n_ctx - 16]
    if spec.embeddings:
        e.embed([e.detokenize(fill).decode(errors="ignore")], truncate=True)
    else:
        e.create_completion(fill, max_tokens=8)
print(json.dumps({"loaded": loaded, "growth": rss() - before}))
"""


def rss_growth(spec: LlamaCppBackend) -> int:
    """Bytes the process grew by, from before the load to after a prompt that fills the context."""
    out = subprocess.run(
        [sys.executable, "-c", CHILD, spec.model_dump_json(), str(ROOT)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return int(json.loads(out.strip().splitlines()[-1])["growth"])
