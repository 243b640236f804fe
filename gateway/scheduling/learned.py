"""Which memory figure a model is budgeted with: the estimate, or what the model really took (pure).

A model's estimate comes from its GGUF metadata before any load (``backends.gguf.memory``); once it has loaded
here, the gateway knows its real footprint: the peak seen, kept per manifest version (``manifest_version``).
The budget then uses that peak plus a safety margin **when it is above the estimate** (the estimate was
short: budgeting with it would let loads run the host out of memory).

A peak below the estimate does not lower the budget: the peak is measured right after the load and while
serving, and a context that was never filled has not touched its whole KV cache (Gemma 3 270M at 2k: 333 MiB
right after the load, 380 MiB filled), so budgeting with it would let a later long request run the host out
of memory. Lowering the budget needs a measurement known to be of a filled context, which nothing takes yet.

A manifest that gives ``memory`` explicitly keeps it: the operator's figure is not second-guessed. The side
effects (measuring, storing, logging) live elsewhere (``gateway.observability.footprint``,
``gateway.scheduling.learned_store``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

from gateway.config.manifest import ModelManifest
from gateway.config.settings import DEFAULT_LEARNED_MARGIN

Source = Literal["estimate", "learned", "manifest"]
DEFAULT_MARGIN = DEFAULT_LEARNED_MARGIN  # the setting's default (``GATEWAY_LEARNED_MARGIN``)


@dataclass(frozen=True)
class Budgeted:
    estimate: int  # bytes, before any load (or the manifest's own figure)
    learned: int | None  # the peak measured for this manifest version, if it has loaded
    figure: int  # what the budget uses
    source: Source


def budget_figure(estimate: int, learned: int | None, margin: float, overridden: bool = False) -> Budgeted:
    """``margin``: the fraction added to a learned peak (0.04: 4%). ``overridden``: the manifest gives
    ``memory`` itself, which then always wins. A learned peak only ever raises the budget over the estimate
    (see the module's docstring)."""
    if overridden:
        return Budgeted(estimate, learned, estimate, "manifest")
    if learned is None or learned <= 0:
        return Budgeted(estimate, learned, estimate, "estimate")
    with_margin = int(learned * (1.0 + margin))
    if with_margin <= estimate:
        return Budgeted(estimate, learned, estimate, "estimate")
    return Budgeted(estimate, learned, with_margin, "learned")


def exceeds_estimate(estimate: int, learned: int, margin: float) -> bool:
    """Whether a learned peak is over the estimate by more than the margin (worth a warning: the estimate is
    wrong for this model, and budgets made before its first load were short)."""
    return learned > estimate * (1.0 + margin)


def manifest_version(manifest: ModelManifest) -> str:
    """What a learned footprint is kept under: a hash of the manifest's validated content, so that any change
    (another file, context, batch...) starts learning anew. The GGUF file's own bytes are not hashed (a file
    replaced under the same path keeps the old figure until the manifest changes)."""
    return hashlib.sha256(manifest.model_dump_json().encode()).hexdigest()[:16]
