"""Hot reload of the manifests (SIGHUP, ``POST /admin/reload``, ``serve --watch``).

``diff`` (pure) compares the models being served with a fresh read of the manifest directory:

- a new model is added (and loaded at once if pinned);
- a model whose manifest is gone is removed: new requests get 404 at once, requests in flight complete
  (drain grace), then it unloads;
- a model whose manifest changed drains and unloads, then its new version takes its place; requests that
  arrive meanwhile wait for it, as they wait during any drain, and are served by the new version;
- an unchanged model is not touched: not its slot, not its backend, not its state;
- a file that no longer validates keeps the models it declared before, serving, and its problems (file,
  field, reason) are reported: a typo never takes a model down.

One reload at a time; the models that change drain together, so a reload takes as long as its longest drain.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config.loading import LoadedManifest, ManifestProblem, ManifestSet, load_directory
from gateway.control.state import Gateway
from gateway.scheduling.lifecycle import ModelSlot
from gateway.scheduling.placement import DoesNotFit, plan
from gateway.scheduling.registry import make_slot

log = logging.getLogger(__name__)

WATCH_INTERVAL = 1.0


@dataclass(frozen=True)
class Diff:
    added: tuple[LoadedManifest, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[LoadedManifest, ...] = ()
    unchanged: tuple[str, ...] = ()
    kept: tuple[LoadedManifest, ...] = ()  # old versions kept because their file no longer validates
    problems: tuple[ManifestProblem, ...] = ()
    served: tuple[LoadedManifest, ...] = ()  # every manifest served after the reload

    def manifests(self) -> ManifestSet:
        return ManifestSet(list(self.served), list(self.problems))


def diff(current: list[LoadedManifest], fresh: ManifestSet) -> Diff:
    broken = {p.file for p in fresh.problems}
    new = {m.manifest.name: m for m in fresh.models}
    old = {m.manifest.name: m for m in current}
    kept = tuple(m for name, m in old.items() if name not in new and m.file in broken)
    unchanged = [m for name, m in new.items() if name in old and m.manifest == old[name].manifest]
    return Diff(
        added=tuple(m for name, m in new.items() if name not in old),
        removed=tuple(name for name, m in old.items() if name not in new and m.file not in broken),
        changed=tuple(m for name, m in new.items() if name in old and m.manifest != old[name].manifest),
        unchanged=tuple(m.manifest.name for m in unchanged),
        kept=kept,
        problems=tuple(fresh.problems),
        served=(*fresh.models, *kept),
    )


@dataclass
class ReloadResult:
    added: list[str]
    removed: list[str]
    changed: list[str]
    unchanged: int
    problems: list[ManifestProblem]

    def as_json(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "removed": self.removed,
            "changed": self.changed,
            "unchanged": self.unchanged,
            "problems": [{"file": str(p.file), "field": p.field, "reason": p.reason} for p in self.problems],
        }


async def reload(gw: Gateway) -> ReloadResult:
    """Read the manifests again and apply the difference (one reload at a time)."""
    return await _Reloader(gw).reload()


class _Reloader:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    async def reload(self) -> ReloadResult:
        async with self.gw.reload_lock:
            gw = self.gw
            # file I/O, off the loop
            fresh = await asyncio.to_thread(load_directory, gw.settings.manifests, gw.kinds)
            d = diff(gw.manifests.models, fresh)
            for problem in d.problems:
                log.error("reload: manifest problem (the previous version keeps serving): %s", problem)
            gw.manifests = d.manifests()
            await asyncio.gather(
                *(self._remove(gw.registry.slots[name]) for name in d.removed),
                *(self._replace(gw.registry.slots[m.manifest.name], m) for m in d.changed),
            )
            for m in d.added:
                self._add(m)
            result = ReloadResult(
                [m.manifest.name for m in d.added],
                list(d.removed),
                [m.manifest.name for m in d.changed],
                len(d.unchanged) + len(d.kept),
                list(d.problems),
            )
            log.info(
                "reload: %d added, %d removed, %d changed, %d unchanged, %d problems",
                len(result.added), len(result.removed), len(result.changed), result.unchanged,
                len(result.problems),
            )  # fmt: skip
            return result

    def _new_slot(self, m: LoadedManifest) -> tuple[ModelSlot, str]:
        gw = self.gw
        slot, source = make_slot(m.manifest, gw.settings, gw.hosts, gw.kinds, gw.footprints.store)
        slot.pinned = gw.pins.pinned(slot.name, m.manifest.pinned)
        never = plan(slot.name, slot.demand, [], gw.scheduler.budgets)
        if isinstance(never, DoesNotFit):
            gw.never_fits[slot.name] = never.reason
            log.warning("%s can never be loaded here: %s", slot.name, never.reason)
        else:
            gw.never_fits.pop(slot.name, None)
        return slot, source

    def _add(self, m: LoadedManifest) -> None:
        gw = self.gw
        slot, source = self._new_slot(m)
        gw.registry.add((slot, source))
        gw.scheduler.adopt(slot)
        gw.metrics.declare(slot.name)
        if slot.pinned:
            gw.scheduler.load(slot)

    async def _retire(self, slot: ModelSlot, why: str) -> None:
        """The old version never loads again: its load is cancelled at any stage (loading, or waiting for
        evictions), then it drains and unloads."""
        sched = self.gw.scheduler
        sched.retire(slot)
        await sched.cancel_load(slot)
        await sched.unload(slot, why, "reload")

    async def _remove(self, slot: ModelSlot) -> None:
        gw = self.gw
        gw.registry.remove(slot)  # new requests: 404 from now on
        slot.removed = True
        await self._retire(slot, "removed by a reload")
        gw.scheduler.forget(slot)
        gw.metrics.forget(slot.name)
        gw.pins.forget({slot.name})
        gw.never_fits.pop(slot.name, None)

    async def _replace(self, old: ModelSlot, m: LoadedManifest) -> None:
        gw = self.gw
        new, source = self._new_slot(m)
        old.replaced_by = new  # requests waiting on the old version move to the new one once it is gone
        await self._retire(old, "changed by a reload")
        gw.registry.remove(old)
        gw.registry.add((new, source))
        gw.scheduler.adopt(new)
        if new.pinned:
            gw.scheduler.load(new)


def snapshot(directory: Path) -> dict[Path, tuple[int, int]]:
    """Each manifest file's modification time and size (what ``watch`` compares)."""
    found = {}
    for path in [*directory.glob("*.yaml"), *directory.glob("*.yml")]:
        try:
            stat = path.stat()
        except OSError:
            continue
        found[path] = (stat.st_mtime_ns, stat.st_size)
    return found


def watch(gw: Gateway, seen: dict[Path, tuple[int, int]]) -> Callable[[], Awaitable[None]]:
    """One look at the manifest directory, reloading when a file was added, removed or rewritten since the
    last look (``serve --watch`` runs it every ``WATCH_INTERVAL``). Polling: a few stat calls a second, and it
    works on every filesystem, bind mounts and network shares included. ``seen``: the snapshot at startup,
    so that a change from then on is a change."""

    async def step() -> None:
        nonlocal seen
        now = await asyncio.to_thread(snapshot, gw.settings.manifests)
        if now != seen:
            seen = now
            await reload(gw)

    return step


def on_sighup(gw: Gateway) -> None:
    """Reload on SIGHUP, as servers do (only possible on the main thread's event loop)."""
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        task = loop.create_task(reload(gw), name="reload:SIGHUP")
        task.add_done_callback(_log_failure)

    try:
        loop.add_signal_handler(signal.SIGHUP, on_signal)
    except (RuntimeError, ValueError, NotImplementedError):  # not the main thread (tests), or no signals
        log.debug("SIGHUP reload not installed: not on the main thread")


def _log_failure(task: asyncio.Task[ReloadResult]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("reload failed: %s", task.exception())
