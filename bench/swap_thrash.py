"""Swap-aware admission against first-come order, side by side in one run (issue 18).

The workload of ``swap_fairness.py``: three in-process SmolLM2 models under a 400 MiB budget that holds one,
two closed-loop clients per model sending short chat requests (8 tokens), for ``--seconds`` per policy. The
gateway runs as ``llm-gateway serve`` with ``GATEWAY_SWAP_POLICY`` set to each policy in turn. Per policy: the
loads (swaps), the requests answered, the errors, and the longest wait of one request, which swap-aware
admission bounds by ``max_swap_wait`` (``GATEWAY_MAX_SWAP_WAIT``, 10 s by default) plus a drain and a load.

    python bench/swap_thrash.py [--seconds 120] [--max-swap-wait 10]
"""

from __future__ import annotations

import argparse

from _table import print_table  # bench/, on the path when run as a script
from swap_fairness import CLIENTS, MODELS, ROOT, run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--max-swap-wait", type=float, default=10.0)
    args = parser.parse_args()
    totals = []
    for i, policy in enumerate(("fifo", "swap-aware")):
        env = {"GATEWAY_SWAP_POLICY": policy, "GATEWAY_MAX_SWAP_WAIT": str(args.max_swap_wait)}
        rows = run(ROOT, args.seconds, 18980 + i, env)
        answers = sum(int(r[2]) for r in rows)
        loads = sum(int(r[5]) for r in rows)
        errors = sum(0 if r[3] == "0" else sum(int(p.split(": ")[1]) for p in r[3].split(", ")) for r in rows)
        longest = max(float(r[4]) for r in rows)
        per_model = " / ".join(r[2] for r in rows)
        totals.append([policy, str(loads), str(answers), per_model, str(errors), f"{longest:.1f}"])
    print(
        f"{len(MODELS)} SmolLM2 models, 400 MiB budget (one fits), {CLIENTS} closed-loop clients each, "
        f"{args.seconds:g}s per policy, max_swap_wait {args.max_swap_wait:g}s"
    )
    print_table(["policy", "loads", "answers", "answers per model", "errors", "longest wait s"], totals)


if __name__ == "__main__":
    main()
