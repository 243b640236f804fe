"""A request waiting on its model's state (``ModelSlot.wait_change``) must stay cancellable: a client that
leaves at the very moment the state changes must not have its request carry on, load and generate for
nobody (``asyncio.wait_for`` on Python 3.11 swallows a cancellation that arrives as the event fires)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.config.manifest import ModelManifest
from gateway.scheduling.lifecycle import ModelSlot
from gateway.scheduling.placement import HOST, Option


def slot() -> ModelSlot:
    manifest = ModelManifest.model_validate(
        {"name": "m", "backend": {"kind": "llama_cpp", "model": str(Path(__file__).resolve())}}
    )
    return ModelSlot(manifest, [[Option({HOST: 1})]], lambda _: [], max_queue=1)


def test_a_cancellation_that_arrives_with_the_state_change_is_not_lost() -> None:
    async def main() -> None:
        s = slot()
        waiter = asyncio.create_task(s.wait_change(60))
        await asyncio.sleep(0)  # the waiter is now parked on the event
        s.begin_load((0,))  # the state changes ...
        waiter.cancel()  # ... and the client leaves, in the same loop iteration
        with pytest.raises(asyncio.CancelledError):
            await waiter

    asyncio.run(main())


def test_wait_change_reports_a_change_and_a_timeout() -> None:
    async def main() -> None:
        s = slot()
        waiter = asyncio.create_task(s.wait_change(60))
        await asyncio.sleep(0)
        s.begin_load((0,))
        assert await waiter is True
        assert await s.wait_change(0.01) is False

    asyncio.run(main())
