"""Process-wide settings of the interpreter for ``llm-gateway serve`` (not for tests, which run many
gateways in one process).

The garbage collector: everything imported and built before serving (starlette, pydantic's schemas, the
manifests, numpy and llama.cpp's bindings once a model loads) is long-lived, yet each full collection walks
all of it again, a pause of several milliseconds on this machine for every request in flight. ``gc.freeze``
moves what exists at startup out of the collector's sight, and a larger first-generation threshold makes the
short-lived garbage of the request path (dicts, bytes, coroutines; no cycles in the common case) cost fewer
collections. bench/README.md has the tail latencies before and after.
"""

from __future__ import annotations

import gc

GEN0_THRESHOLD = 50_000


def tune_gc() -> None:
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
