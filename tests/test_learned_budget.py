"""The pure choice of the memory figure a model is budgeted with (``gateway.scheduling.learned``)."""

from __future__ import annotations

from gateway.scheduling.learned import DEFAULT_MARGIN, budget_figure, exceeds_estimate

MiB = 1 << 20


def test_before_any_load_the_estimate_is_used() -> None:
    b = budget_figure(470 * MiB, None, DEFAULT_MARGIN)
    assert (b.figure, b.source, b.learned) == (470 * MiB, "estimate", None)


def test_a_learned_peak_below_the_estimate_does_not_lower_the_budget() -> None:
    # Gemma 3 270M at 2k before issue 19: estimated 470 MiB, 333 right after the load, 380 filled: a peak
    # not known to be of a filled context would budget too low
    b = budget_figure(470 * MiB, 333 * MiB, 0.04)
    assert (b.figure, b.source, b.learned) == (470 * MiB, "estimate", 333 * MiB)


def test_a_learned_peak_above_the_estimate_raises_the_budget() -> None:
    b = budget_figure(400 * MiB, 500 * MiB, 0.04)
    assert b.figure == int(500 * MiB * 1.04) and b.source == "learned"
    assert exceeds_estimate(400 * MiB, 500 * MiB, 0.04)
    assert not exceeds_estimate(500 * MiB, 515 * MiB, 0.04)  # within the margin: no warning


def test_the_manifests_own_figure_always_wins() -> None:
    b = budget_figure(6 << 30, 300 * MiB, 0.04, overridden=True)
    assert (b.figure, b.source, b.learned) == (6 << 30, "manifest", 300 * MiB)
