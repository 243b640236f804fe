"""The container each preset runs: image, entrypoint, command line, mounts, port, GPUs. Pure: no engine calls.

``ContainerRun`` (``backends.docker.container``) is what the replica hands to the Docker SDK (``run_kwargs``),
and what the golden test of the ``vllm`` preset compares, so the spec that reaches the engine is the one that
is tested.

- ``llamacpp`` reuses ``backends.llama_server.args.server_args``, the function the process kind uses, so the
  two kinds can never disagree on a flag. The GGUF's directory is mounted read-only at ``/models``, a chat
  template's at ``/templates``.
- ``vllm`` follows vLLM's own ``docker run`` instructions: ``--ipc=host`` by default, a Hugging Face cache
  volume, every served name (the manifest's name and aliases, so a client may use any of them), and the API
  key in ``VLLM_API_KEY`` rather than on the command line.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence

from backends.container.spec import LlamaCppContainer, RawContainer, RpcWorker, VllmContainer
from backends.docker.interface import ContainerRun
from backends.llama_server.args import server_args

HF_CACHE = "/root/.cache/huggingface"


def _mount_file(mounts: dict[str, tuple[str, str]], host_file: str, directory: str) -> str:
    """Mount ``host_file``'s directory read-only at ``directory``; returns the file's path inside."""
    mounts[posixpath.dirname(host_file)] = (directory, "ro")
    return posixpath.join(directory, posixpath.basename(host_file))


def _extra_mounts(volumes: Sequence[str]) -> dict[str, tuple[str, str]]:
    mounts = {}
    for volume in volumes:
        host, path, *mode = volume.split(":")
        mounts[host] = (path, mode[0] if mode else "rw")
    return mounts


def llamacpp_run(
    spec: LlamaCppContainer, gpu_ids: Sequence[int], rpc: Sequence[str] = (), names: Sequence[str] = ()
) -> ContainerRun:
    """``rpc``: the addresses of the worker containers (``host:port``), or the manifest's own ``rpc``;
    ``names``: the model's name and aliases (``--alias``)."""
    mounts = _extra_mounts(spec.volumes)
    model = _mount_file(mounts, spec.model, "/models")
    template = _mount_file(mounts, spec.chat_template_file, "/templates") if spec.chat_template_file else None
    command = server_args(
        spec,
        model=model,
        host="0.0.0.0",
        port=spec.port,
        chat_template_file=template,
        rpc=rpc or spec.rpc,
        names=names,
    )
    return ContainerRun(
        image=spec.image,
        command=command,
        port=spec.port,
        environment=dict(spec.env),
        mounts=mounts,
        gpu_ids=tuple(gpu_ids),
        shm_size=spec.shm_size,
        ipc_mode=spec.ipc_mode,
        network=spec.network,
    )


def rpc_worker_run(spec: LlamaCppContainer, worker: RpcWorker, gpu_ids: Sequence[int]) -> ContainerRun:
    """An RPC worker: ``rpc-server`` listening on all interfaces, so the main server on another host can
    reach it through the published port. Its memory is bounded by the budget claim (``worker.memory``)."""
    return ContainerRun(
        image=worker.image or spec.image,
        entrypoint=worker.command,
        command=[
            "-H",
            "0.0.0.0",
            "-p",
            str(worker.port),
            *(["-t", str(worker.threads)] if worker.threads else []),
        ],
        port=worker.port,
        environment=dict(spec.env),
        mounts=_extra_mounts(spec.volumes),  # the same image as the server, by default: the same mounts
        gpu_ids=tuple(gpu_ids),
        health_path="",  # not HTTP: it is ready when its port accepts a connection
        public=True,
    )


def vllm_run(spec: VllmContainer, names: Sequence[str], gpu_ids: Sequence[int]) -> ContainerRun:
    """``names``: the public names (manifest name, then aliases) that vLLM must answer to."""
    mounts = _extra_mounts(spec.volumes)
    environment = dict(spec.env)
    model = spec.model
    if model.startswith("/"):
        model = f"/models/{posixpath.basename(model.rstrip('/'))}"
        mounts[spec.model] = (model, "ro")
    served = list(dict.fromkeys([spec.served_model_name or names[0], *names]))
    command = [
        "--model",
        model,
        "--served-model-name",
        *served,
        "--host",
        "0.0.0.0",
        "--port",
        str(spec.port),
        "--gpu-memory-utilization",
        f"{spec.gpu_memory_utilization:g}",
        "--tensor-parallel-size",
        str(spec.tensor_parallel_size),
        "--max-num-seqs",
        str(spec.max_num_seqs),
    ]
    if spec.quantization:
        command += ["--quantization", spec.quantization]
    if spec.max_model_len:
        command += ["--max-model-len", str(spec.max_model_len)]
    if spec.dtype:
        command += ["--dtype", spec.dtype]
    if spec.chat_template:
        command += ["--chat-template", _mount_file(mounts, spec.chat_template, "/templates")]
    if spec.enable_prefix_caching is not None:
        command.append(
            "--enable-prefix-caching" if spec.enable_prefix_caching else "--no-enable-prefix-caching"
        )
    if spec.cache_dir:
        mounts[spec.cache_dir] = (HF_CACHE, "rw")
    api_key = spec.api_key.get_secret_value() if spec.api_key else None
    if api_key:
        environment["VLLM_API_KEY"] = api_key
    return ContainerRun(
        image=spec.image,
        command=[*command, *spec.extra_args],
        port=spec.port,
        environment=environment,
        mounts=mounts,
        gpu_ids=tuple(gpu_ids),
        shm_size=spec.shm_size,
        ipc_mode=spec.ipc_mode,
        network=spec.network,
        health_path="/v1/models",  # ready when it lists the served model (and the API key works)
        api_key=api_key,
    )


def raw_run(spec: RawContainer, gpu_ids: Sequence[int]) -> ContainerRun:
    return ContainerRun(
        image=spec.image,
        entrypoint=spec.command,
        command=[*spec.args, *spec.extra_args],
        port=spec.port,
        environment=dict(spec.env),
        mounts=_extra_mounts(spec.volumes),
        gpu_ids=tuple(gpu_ids),
        shm_size=spec.shm_size,
        ipc_mode=spec.ipc_mode,
        network=spec.network,
        health_path=spec.health_path,
        metrics_path=None,
    )
