"""One host's Docker Engine API as a ``ContainerEngine`` (``backends.docker.interface``): its containers are
run with ``backends.docker.container``, with a port the engine publishes. It cannot tell when its host goes
down (it *is* that host): its replicas are found dead by their health probes."""

from __future__ import annotations

from collections.abc import Callable

from backends.docker.container import ManagedContainer, run_container
from backends.docker.engine import DockerEngine
from backends.docker.interface import ContainerRun, HostListener


class DockerHost(DockerEngine):
    async def run_container(
        self,
        run: ContainerRun,
        name: str,
        labels: dict[str, str],
        pull: str,
        timeout: float,
        phase: Callable[[str], None] | None = None,
    ) -> ManagedContainer:
        return await run_container(self, run, name, labels, pull, timeout, phase)

    def start_watch(self, listener: HostListener) -> None:
        """Nothing to watch: a single engine reports no host state."""
