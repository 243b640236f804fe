"""The container specs the presets generate, for the example manifests of what people run by hand today.

vLLM cannot run here (no GPU, no image), so its preset is pinned by a golden spec: the exact keyword arguments
that reach the Docker SDK for the karakuri-70b example (command line, device request, IPC, ports), and the
memory it claims. The llama.cpp preset is run for real by tests/test_containers.py; here its command line is
checked against the docker-run line it replaces, and against the process kind's flags (one generator)."""

from __future__ import annotations

import json
from pathlib import Path

from backends.container.kind import CONTAINER
from backends.container.presets import llamacpp_run, rpc_worker_run, vllm_run
from backends.container.spec import LlamaCppContainer, VllmContainer
from backends.demand import EngineDevices
from backends.kinds import Hosts
from backends.llama_server.args import process_args
from backends.llama_server.spec import LlamaServerBackend
from gateway.config.loading import load_directory, load_file
from gateway.scheduling.placement import Fits, plan

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "manifests" / "examples"
GOLDEN = Path(__file__).resolve().parent / "golden"
GiB = 2**30


def example(name: str) -> object:
    loaded = load_file(EXAMPLES / name)
    assert loaded.problems == []
    return loaded.models[0].manifest


def test_every_example_is_a_valid_manifest() -> None:
    result = load_directory(EXAMPLES)
    assert result.problems == []
    assert {m.manifest.name for m in result.models} == {"vicuna-13b", "karakuri-70b", "tinyllama-rpc"}


def test_vllm_example_matches_its_golden_container_spec() -> None:
    manifest = example("karakuri-70b-vllm.yaml")
    spec = manifest.backend  # type: ignore[attr-defined]
    assert isinstance(spec, VllmContainer)
    run = vllm_run(spec, [manifest.name, *manifest.aliases], gpu_ids=(1,))  # type: ignore[attr-defined]
    got = json.loads(json.dumps(run.run_kwargs("0.0.0.0")))  # tuples as lists, as in the golden file
    assert got == json.loads((GOLDEN / "karakuri-70b-vllm.json").read_text())
    assert run.health_path == "/v1/models"


def test_vllm_claims_its_share_of_each_gpu_it_gets() -> None:
    manifest = example("karakuri-70b-vllm.yaml")
    spec = manifest.backend  # type: ignore[attr-defined]
    engine = EngineDevices("gpu-box", "gpu-box:ram", ((0, "gpu-box:gpu0"), (1, "gpu-box:gpu1")))
    budgets = {"host": 8 * GiB, "gpu-box:ram": 64 * GiB, "gpu-box:gpu0": 80 * GiB, "gpu-box:gpu1": 48 * GiB}
    units = CONTAINER.demand(spec, 0, Hosts(inventory=[engine], budgets=budgets))
    assert [o.claims for o in units[0]] == [
        {"gpu-box:gpu0": int(0.9 * 80 * GiB)},
        {"gpu-box:gpu1": int(0.9 * 48 * GiB)},
    ]
    # With GPU 0 held by another model, it goes to GPU 1 and the device request names exactly that GPU.
    from gateway.scheduling.placement import Resident

    decision = plan(
        "karakuri-70b", units, [Resident("other", {"gpu-box:gpu0": 10 * GiB}, pinned=True)], budgets
    )
    assert decision == Fits((), (1,))
    chosen = units[0][1]
    run = vllm_run(spec, ["karakuri-70b"], chosen.gpus)
    assert run.run_kwargs("0.0.0.0")["device_requests"][0]["device_ids"] == ["1"]


def test_llamacpp_example_has_every_flag_of_the_docker_run_line() -> None:
    spec = example("vicuna-13b-llamacpp.yaml").backend  # type: ignore[attr-defined]
    assert isinstance(spec, LlamaCppContainer)
    run = llamacpp_run(spec, gpu_ids=(0,))
    args = run.command

    def flag(name: str) -> str:
        return args[args.index(name) + 1]

    assert flag("--chat-template") == "vicuna" and flag("--threads-batch") == "8"
    assert flag("--threads-http") == "8" and flag("-c") == "4096" and flag("-np") == "8"
    assert "--embeddings" in args and "--cont-batching" in args and flag("-fa") == "on"
    assert flag("-ngl") == "96"
    assert flag("-m") == "/models/vicuna-13b-v1.5.Q8_0.gguf"
    assert run.mounts == {"/home/llm/llamacpp/model": ("/models", "ro")}
    assert flag("--host") == "0.0.0.0" and flag("--port") == "8080"
    kwargs = run.run_kwargs("127.0.0.1")
    assert kwargs["ports"] == {"8080/tcp": ("127.0.0.1", None)}
    assert kwargs["device_requests"] == [{"driver": "nvidia", "device_ids": ["0"], "capabilities": [["gpu"]]}]
    assert "entrypoint" not in kwargs  # the image's own: llama-server


def test_container_and_process_flags_differ_only_in_paths_host_and_port(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    fields = {"model": str(model), "n_ctx": 8192, "parallel": 3, "flash_attn": True, "n_gpu_layers": -1}
    fields |= {"threads": 4, "chat_template": "chatml", "extra_args": ["--mlock"]}
    process = process_args(LlamaServerBackend.model_validate({"kind": "llama_server", **fields}), 9000)
    container = llamacpp_run(
        LlamaCppContainer.model_validate({"kind": "container", "preset": "llamacpp", **fields}), ()
    ).command
    differ = {"-m", "--host", "--port"}
    strip = lambda args: [a for i, a in enumerate(args) if a not in differ and args[i - 1] not in differ]  # noqa: E731
    assert strip(process) == strip(container)
    assert container[-1] == "--mlock"


def test_rpc_workers_listen_on_all_interfaces_and_the_server_uses_their_addresses() -> None:
    spec = example("tinyllama-rpc.yaml").backend  # type: ignore[attr-defined]
    assert isinstance(spec, LlamaCppContainer)
    worker = rpc_worker_run(spec, spec.rpc_workers[1], gpu_ids=(0,))
    assert worker.entrypoint == ["/app/rpc-server"] and worker.command == ["-H", "0.0.0.0", "-p", "50052"]
    assert worker.run_kwargs("0.0.0.0")["device_requests"][0]["device_ids"] == ["0"]
    server = llamacpp_run(spec, (), rpc=["10.0.0.2:32768", "10.0.0.3:32769"])
    assert server.command[server.command.index("--rpc") + 1] == "10.0.0.2:32768,10.0.0.3:32769"
