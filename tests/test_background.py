"""Background loops (``gateway.observability.background``): a step that raises is logged with its traceback
and retried, never the end of the loop; one that keeps failing is reported, and clears once it works."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gateway.observability.background import FAILING_AFTER, Background


def test_a_failing_step_is_logged_retried_and_reported_until_it_works(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="gateway.observability.background")
    calls: list[int] = []

    async def scenario() -> None:
        failing_seen = asyncio.Event()
        recovered = asyncio.Event()
        background = Background()

        async def step() -> None:
            calls.append(len(calls))
            if len(calls) <= FAILING_AFTER:
                raise RuntimeError(f"scrape number {len(calls)} broke")
            if len(calls) == FAILING_AFTER + 1:
                failing_seen.set()
            elif len(calls) == FAILING_AFTER + 2:
                recovered.set()

        background.every("engine-scrape", 0.001, step)
        async with asyncio.timeout(60):  # bounds a hang; the loop's own waits are a few milliseconds
            await failing_seen.wait()
            # the step after the third failure runs: the loop survived, and was reported meanwhile
            assert background.loops["engine-scrape"].total_failures == FAILING_AFTER
            await recovered.wait()
        assert background.failing() == {}  # working again: no longer reported
        await background.stop()
        assert all(t.done() for t in asyncio.all_tasks() if t.get_name() == "engine-scrape")

    asyncio.run(scenario())
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == FAILING_AFTER
    assert errors[0].exc_info is not None  # the traceback is in the log
    assert "engine-scrape failed (1 in a row)" in errors[0].getMessage()


def test_a_loop_failing_in_a_row_is_reported_with_its_last_error() -> None:
    async def scenario() -> dict[str, str | None]:
        background = Background()
        reported = asyncio.Event()

        async def step() -> None:
            if background.failing():
                reported.set()
            raise OSError("disk full")

        background.every("stats-line", 0.001, step)
        async with asyncio.timeout(60):
            await reported.wait()
        failing = {name: h.last_error for name, h in background.failing().items()}
        await background.stop()
        return failing

    assert asyncio.run(scenario()) == {"stats-line": "OSError: disk full"}
