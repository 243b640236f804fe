"""The ``llama-server`` command line for a manifest: flags only, no processes.

Kept apart from ``backends.llama_server.replica`` (which launches and supervises the processes) so that it
imports nothing but the manifest models: ``bench/vram_estimate.py`` runs it on a GPU machine without the
gateway's web stack.
"""

from __future__ import annotations

from collections.abc import Sequence

from backends.llama_server.spec import LlamaServerBackend, LlamaServerFlags


def server_args(
    spec: LlamaServerFlags,
    *,
    model: str,
    port: int,
    host: str = "127.0.0.1",
    chat_template_file: str | None = None,
    rpc: Sequence[str] = (),
    names: Sequence[str] = (),
) -> list[str]:
    """The flags for ``spec``. Paths and addresses are passed in, because they differ between a process on
    this machine and a container (where the files are mounted elsewhere and the workers are managed).
    ``names``: the model's name and aliases (``--alias``), so that answers name the model, not its file."""
    args = [
        "-m",
        model,
        *(["--alias", ",".join(names)] if names else []),
        "--host",
        host,
        "--port",
        str(port),
        "-c",
        str(spec.n_ctx),
        "-b",
        str(spec.n_batch),
        "-np",
        str(spec.parallel),
        "-ngl",
        _gpu_layers(spec.n_gpu_layers),
        "-fa",
        "on" if spec.flash_attn else "off",
        "--metrics",
        "--cont-batching" if spec.cont_batching else "--no-cont-batching",
    ]
    if spec.threads:
        args += ["-t", str(spec.threads)]
    if spec.threads_batch:
        args += ["--threads-batch", str(spec.threads_batch)]
    if spec.threads_http:
        args += ["--threads-http", str(spec.threads_http)]
    if spec.chat_template:
        args += ["--chat-template", spec.chat_template]
    if chat_template_file:
        args += ["--chat-template-file", chat_template_file]
    if spec.embeddings:
        args += ["--embeddings", "--pooling", spec.pooling]
    if rpc:
        args += ["--rpc", ",".join(rpc)]
    return [*args, *spec.extra_args]


def process_args(spec: LlamaServerBackend, port: int, names: Sequence[str] = ()) -> list[str]:
    """The flags of a llama-server on this machine: the manifest's own paths and RPC workers."""
    template = str(spec.chat_template_file) if spec.chat_template_file else None
    return server_args(
        spec, model=str(spec.model), port=port, chat_template_file=template, rpc=spec.rpc, names=names
    )


def _gpu_layers(n: int) -> str:
    """-1 means every layer. Recent llama-server reads ``-ngl -1`` as "auto" (fit what free memory allows,
    measured on an H100: bench/README.md), and its own default is "auto" too, so 0 and -1 are spelled out.
    999 rather than "all": older builds, which users may have on PATH, accept only numbers."""
    return "999" if n < 0 else str(n)
