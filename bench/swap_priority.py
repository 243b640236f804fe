"""Priorities in swap decisions: an interactive request for a model that is not loaded, while a flood keeps
the model that holds the memory busy, with the flood marked batch or not, side by side in one run (issue 18).

Two in-process SmolLM2 models under a 400 MiB budget that holds one (``swap_fairness.py``'s gateway,
``llm-gateway serve``, swap-aware admission with ``max_swap_wait`` 10 s). ``--flood`` closed-loop clients
keep model ``a`` busy with short chat requests (8 tokens); then, ``--rounds`` times, one interactive request
for ``b``, timed to its whole answer; between rounds the flood takes ``a`` back. Batch work does not protect
its model from an interactive request's load: that request waits about one drain and one load; a flood of
equals keeps its turn for up to ``max_swap_wait``.

    python bench/swap_priority.py [--rounds 5] [--flood 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
import yaml
from _table import print_table  # bench/, on the path when run as a script
from swap_fairness import MODEL, ROOT, serve


def body(model: str) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8}


def flood(base: str, headers: dict[str, str], stop: threading.Event, answers: list[int]) -> None:
    with httpx.Client(base_url=base, timeout=300) as http:
        while not stop.is_set():
            answers.append(http.post("/v1/chat/completions", json=body("a"), headers=headers).status_code)


def state(base: str, model: str) -> str:
    return str(httpx.get(f"{base}/admin/models/{model}", timeout=30).json()["state"])


def run(case: str, headers: dict[str, str], flooders: int, rounds: int, port: int) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        for name in "ab":
            manifest = {
                "name": name,
                "backend": {"kind": "llama_cpp", "model": str(MODEL), "n_ctx": 2048, "n_threads": 1},
            }
            (Path(tmp) / f"{name}.yaml").write_text(yaml.safe_dump(manifest))
        proc = serve(ROOT, Path(tmp), port, {"GATEWAY_MAX_SWAP_WAIT": "10"})
        base = f"http://127.0.0.1:{port}"
        stop = threading.Event()
        answers: list[int] = []
        took: list[float] = []
        threads = [
            threading.Thread(target=flood, args=(base, headers, stop, answers)) for _ in range(flooders)
        ]
        try:
            for t in threads:
                t.start()
            with httpx.Client(base_url=base, timeout=300) as http:
                for _ in range(rounds):
                    end = time.monotonic() + 120
                    while state(base, "a") != "ready" and time.monotonic() < end:
                        time.sleep(0.1)  # the flood takes a back
                    time.sleep(1.0)  # and keeps it busy
                    began = time.monotonic()
                    assert http.post("/v1/chat/completions", json=body("b")).status_code == 200
                    took.append(time.monotonic() - began)
        finally:
            stop.set()
            for t in threads:
                t.join(300)
            proc.terminate()
            proc.wait(30)
    errors = sum(1 for s in answers if s != 200)
    return [case, f"{statistics.median(took):.2f}", f"{max(took):.2f}", str(len(answers)), str(errors)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--flood", type=int, default=2)
    args = parser.parse_args()
    rows = [
        run(f"{args.flood} batch clients on a (X-Priority: batch)", {"x-priority": "batch"}, args.flood,
            args.rounds, 18990),
        run(f"{args.flood} clients on a, not marked batch", {}, args.flood, args.rounds, 18991),
    ]  # fmt: skip
    print(
        f"two in-process SmolLM2 models, 400 MiB budget (one fits), max_swap_wait 10s, {args.rounds} rounds"
    )
    print_table(["flood", "interactive b p50 s", "b max s", "flood answers", "flood errors"], rows)


if __name__ == "__main__":
    main()
