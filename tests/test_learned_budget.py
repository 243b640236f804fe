"""The pure choice of the memory figure a model is budgeted with (``gateway.scheduling.learned``), and the
file that keeps the learned peaks (``gateway.scheduling.learned_store``)."""

from __future__ import annotations

from pathlib import Path

from gateway.scheduling.learned import DEFAULT_MARGIN, budget_figure, exceeds_estimate
from gateway.scheduling.learned_store import LearnedStore

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


def test_the_store_keeps_peaks_across_restarts_and_survives_a_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "state" / "learned.json"
    store = LearnedStore(path)
    assert store.peak("v1") is None
    assert store.record("v1", "m", {"host": 100 * MiB})
    assert not store.record("v1", "m", {"host": 90 * MiB})  # only peaks are kept
    assert store.record("v1", "m", {"host": 100 * MiB + 1000})  # under the write step: kept in memory
    assert LearnedStore(path).peak("v1") == 100 * MiB
    store.flush()
    assert LearnedStore(path).peak("v1") == 100 * MiB + 1000
    path.write_text('{"learned": {"v1": {"model": "m", "peak_bytes": "lots"}}}')
    assert LearnedStore(path).entries == {}  # reported, and the models learn again
