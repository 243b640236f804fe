"""Which memory figure a model is budgeted with: the estimate, or what the model really took (pure).

A model's estimate comes from its GGUF metadata before any load (``backends.gguf.memory``); once it has loaded
here, the gateway knows its real footprint (the peak seen, kept per manifest version). From then on the budget
uses that peak plus a safety margin, whether it is above the estimate (the estimate was short: budgeting with
it would let loads run the host out of memory) or below it (the estimate was generous: budgeting with it keeps
the model out of room it fits in). A manifest that gives ``memory`` explicitly keeps it: the operator's figure
is not second-guessed. The side effects (measuring, storing, logging) live elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Source = Literal["estimate", "learned", "manifest"]
# Added to a learned peak: the peak is one measurement, and a later fill may touch a few more pages. 4% keeps
# the budget within the issue's +-5% of the peak and never under it.
DEFAULT_MARGIN = 0.04


@dataclass(frozen=True)
class Budgeted:
    estimate: int  # bytes, before any load (or the manifest's own figure)
    learned: int | None  # the peak measured for this manifest version, if it has loaded
    figure: int  # what the budget uses
    source: Source


def budget_figure(estimate: int, learned: int | None, margin: float, overridden: bool = False) -> Budgeted:
    """``margin``: the fraction added to a learned peak (0.04: 4%). ``overridden``: the manifest gives
    ``memory`` itself, which then always wins."""
    if overridden:
        return Budgeted(estimate, learned, estimate, "manifest")
    if learned is None or learned <= 0:
        return Budgeted(estimate, learned, estimate, "estimate")
    return Budgeted(estimate, learned, int(learned * (1.0 + margin)), "learned")


def exceeds_estimate(estimate: int, learned: int, margin: float) -> bool:
    """Whether a learned peak is over the estimate by more than the margin (worth a warning: the estimate is
    wrong for this model, and budgets made before its first load were short)."""
    return learned > estimate * (1.0 + margin)
