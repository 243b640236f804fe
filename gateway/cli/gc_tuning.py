"""Process-wide settings of the interpreter for ``llm-gateway serve`` (not for tests, which run many
gateways in one process).

The garbage collector: everything imported and built before serving (starlette, pydantic's schemas, the
manifests, the engines' bindings) is long-lived, yet each full collection walks all of it again: a pause of
several milliseconds on this machine, felt by every request in flight, which set the proxy's 99th percentile
(bench/README.md: 27-28 ms at 16 connections with the collector as it comes, 9.5-12 ms with it disabled).
``gc.freeze`` moves what exists at startup out of the collector's sight (p99 10-17 ms). The thresholds stay
Python's: a larger first-generation threshold (50,000 or 5,000 objects) made fewer but longer pauses, and a
worse p99 (17-41 ms).
"""

from __future__ import annotations

import gc


def tune_gc() -> None:
    gc.collect()
    gc.freeze()
