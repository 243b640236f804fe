"""The llama-server command line the gateway generates from a manifest (``backends.llama_server.args``).

That the generated flags are accepted and do what they say is proven by the tests that launch a real
llama-server (tests/test_llama_server.py); these pin down the mapping itself, including the spellings that
differ between the manifest and llama.cpp."""

from __future__ import annotations

from pathlib import Path

from backends.llama_server.args import process_args as server_args
from backends.llama_server.spec import LlamaServerBackend


def spec(tmp_path: Path, **fields: object) -> LlamaServerBackend:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    return LlamaServerBackend.model_validate({"kind": "llama_server", "model": str(model), **fields})


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_every_layer_is_spelled_as_a_number_not_minus_one(tmp_path: Path) -> None:
    """llama-server reads ``-ngl -1`` as "auto" (fit what free memory allows), which offloads fewer layers
    on a crowded GPU: every layer must be asked for explicitly."""
    assert flag(server_args(spec(tmp_path, n_gpu_layers=-1), 8000), "-ngl") == "999"
    assert flag(server_args(spec(tmp_path, n_gpu_layers=0), 8000), "-ngl") == "0"
    assert flag(server_args(spec(tmp_path, n_gpu_layers=20), 8000), "-ngl") == "20"


def test_a_full_manifest_maps_to_llama_server_flags(tmp_path: Path) -> None:
    template = tmp_path / "chat.jinja"
    template.write_text("{{ messages }}")
    args = server_args(
        spec(
            tmp_path,
            n_ctx=16384,
            parallel=4,
            flash_attn=True,
            threads=6,
            threads_http=8,
            chat_template_file=str(template),
            rpc=["10.0.0.2:50052", "10.0.0.3:50052"],
            extra_args=["--mlock"],
        ),
        8123,
    )
    assert flag(args, "--host") == "127.0.0.1" and flag(args, "--port") == "8123"
    assert flag(args, "-c") == "16384" and flag(args, "-np") == "4"
    assert flag(args, "-fa") == "on" and "--cont-batching" in args and "--metrics" in args
    assert flag(args, "-t") == "6" and flag(args, "--threads-http") == "8"
    assert flag(args, "--chat-template-file") == str(template)
    assert flag(args, "--rpc") == "10.0.0.2:50052,10.0.0.3:50052"
    assert args[-1] == "--mlock"
    assert "--embeddings" not in args


def test_embeddings_and_a_named_template(tmp_path: Path) -> None:
    args = server_args(spec(tmp_path, embeddings=True, pooling="cls", chat_template="chatml"), 8000)
    assert flag(args, "--pooling") == "cls" and "--embeddings" in args
    assert flag(args, "--chat-template") == "chatml"
    assert flag(args, "-fa") == "off" and "-t" not in args
