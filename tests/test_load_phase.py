"""The phase a replica's start reports (``backends.base.phase_of``), for ``load_phase`` in /admin/models:
the in-process kind here, with a real (tiny) GGUF; llama-server in tests/test_cli_admin.py and containers in
tests/test_containers.py, over real sockets."""

from __future__ import annotations

import asyncio
from pathlib import Path

from backends.base import phase_of
from backends.llama_cpp.replica import LlamaCppReplica
from backends.llama_cpp.spec import LlamaCppBackend


def test_an_in_process_replica_says_it_loads_weights(model_files: dict[str, Path]) -> None:
    spec = LlamaCppBackend(kind="llama_cpp", model=model_files["b"], n_ctx=256, n_threads=1)

    async def main() -> list[str | None]:
        replica = LlamaCppReplica(spec, "phase")
        seen = [phase_of(replica)]
        start = asyncio.create_task(replica.start())
        await asyncio.sleep(0)  # the start runs up to its load, on the engine's thread
        seen.append(phase_of(replica))
        await start
        seen.append(phase_of(replica))
        await replica.stop()
        return seen

    assert asyncio.run(main()) == [None, "loading weights", None]
