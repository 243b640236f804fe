"""Printing a benchmark's results as the markdown table bench/README.md uses."""

from __future__ import annotations

from collections.abc import Sequence


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(["---", *["---:"] * (len(header) - 2), "---"]) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
