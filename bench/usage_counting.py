"""What counting a generation's tokens costs the in-process engine's decode, in one process, alternating.

- ``none``: no hook (a stream whose client did not ask for usage, and metrics off);
- ``logits processor``: how the gateway counted until issue 16: a logits processor, which makes
  llama-cpp-python copy the whole vocabulary's logits for every token;
- ``sampler hook``: how it counts now (``backends.llama_cpp.jobs._TokenCounter`` on ``Engine.on_sample``).

    python bench/usage_counting.py [--rounds 7]

SmolLM2-135M Q4_1, 128 tokens at temperature 0 (the same text each time), 2 threads; medians of the rounds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _table import print_table  # bench/, on the path when run as a script

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backends.llama_cpp.engine import Engine  # noqa: E402
from backends.llama_cpp.jobs import _TokenCounter  # noqa: E402

MODEL = ROOT / "manifests" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
TOKENS = 128


class LogitsCounter:
    def __init__(self) -> None:
        self.sampled = 0

    def __call__(self, input_ids: np.ndarray[Any, Any], scores: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        self.sampled += 1
        return scores


def run(llm: Engine, how: str) -> float:
    kwargs: dict[str, Any] = {}
    counted: Any = None
    if how == "logits processor":
        counted = LogitsCounter()
        kwargs["logits_processor"] = [counted]
    elif how == "sampler hook":
        counted = _TokenCounter(llm)
        llm.on_sample = counted.on_sample
    began = time.perf_counter()
    out = llm.create_completion("Once upon a time", max_tokens=TOKENS, temperature=0, stream=False, **kwargs)
    elapsed = time.perf_counter() - began
    llm.on_sample = None
    made = out["usage"]["completion_tokens"]
    if counted is not None:
        assert counted.sampled >= made, (how, counted.sampled, made)
    return float(made / elapsed)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    rounds = parser.parse_args().rounds
    llm = Engine(str(MODEL), n_ctx=512, n_threads=2, verbose=False)
    ways = ["none", "logits processor", "sampler hook"]
    speeds: dict[str, list[float]] = {w: [] for w in ways}
    run(llm, "none")  # warm up
    for i in range(rounds):
        for how in ways[i % 3 :] + ways[: i % 3]:  # the order rotates: no way always goes first
            speeds[how].append(run(llm, how))
    base = statistics.median(speeds["none"])
    rows = [
        [w, f"{statistics.median(speeds[w]):.1f}", f"{statistics.median(speeds[w]) / base:.3f}x"]
        for w in ways
    ]
    print(f"SmolLM2-135M Q4_1, {TOKENS} tokens, 2 threads, medians of {rounds} rounds")
    print_table(["counting", "decode tok/s", "x none"], rows)


if __name__ == "__main__":
    main()
