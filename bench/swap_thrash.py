"""Swap-aware admission against first-come order, side by side in one run (issue 18).

The workload of ``swap_fairness.py``: three in-process SmolLM2 models under a 400 MiB budget that holds one,
two closed-loop clients per model sending short chat requests (8 tokens), streamed, for ``--seconds`` per
policy. The gateway runs as ``llm-gateway serve`` with ``GATEWAY_SWAP_POLICY`` set to each policy in turn.
Per policy: the loads (swaps), the requests answered, the errors, and three measures of the longest wait:

- the longest request, whole (its own place behind the other client of its model, and its 8 tokens,
  included);
- the longest time to a first token (the first streamed event with content): the wait for the model
  (admission, the drain of the model it evicts, its load), then its place behind the other client of its
  model, and its prompt's prefill;
- the waits for the model itself (from the request's arrival to its admission) past its ``max_swap_wait``
  plus its load, as the gateway counts them (``gateway_model_wait_past_bound_total``; it also logs the
  first of each minute with its numbers).

Swap-aware admission bounds the wait for the model by ``max_swap_wait`` (``GATEWAY_MAX_SWAP_WAIT``, 10 s by
default; the turn comes early by the swap's expected time) plus the error of its estimates; the target is
``max_swap_wait`` plus one load time (the "load s" column: the longest of the models' last loads).

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
        rows = run(ROOT, args.seconds, 18980 + i, env, stream=True)
        answers = sum(int(r[2]) for r in rows)
        loads = sum(int(r[5]) for r in rows)
        errors = sum(0 if r[3] == "0" else sum(int(p.split(": ")[1]) for p in r[3].split(", ")) for r in rows)
        longest = max(float(r[4]) for r in rows)
        first = max(float(r[6]) for r in rows)
        over = sum(int(r[7]) for r in rows)
        bound = "n/a (no bound)" if policy == "fifo" else str(over)
        load = max(float(r[8]) for r in rows if r[8] != "None")
        per_model = " / ".join(r[2] for r in rows)
        totals.append(
            [policy, str(loads), str(answers), per_model, str(errors), f"{longest:.1f}", f"{first:.1f}",
             bound, f"{load:.2f}"]
        )  # fmt: skip
    print(
        f"{len(MODELS)} SmolLM2 models, 400 MiB budget (one fits), {CLIENTS} closed-loop clients each, "
        f"{args.seconds:g}s per policy, max_swap_wait {args.max_swap_wait:g}s"
    )
    header = ["policy", "loads", "answers", "answers per model", "errors", "longest request s",
              "longest to first token s", "waits for the model past its bound (max_swap_wait + load)",
              "load s"]  # fmt: skip
    print_table(header, totals)


if __name__ == "__main__":
    main()
