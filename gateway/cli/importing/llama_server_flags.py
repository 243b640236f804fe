"""A llama-server command line (what llama-swap runs) to a llama_server backend, flag by flag: the flags the
kind has a field for become fields, the ones the gateway manages are dropped, and the rest are passed on in
``extra_args``."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.cli.importing.report import Conversion
from gateway.cli.importing.values import ctx_from_model, local_path

# llama-server flags -> manifest fields (https://github.com/ggml-org/llama.cpp/tree/master/tools/server)
# fmt: off
_INT_FLAGS = {"-c": "n_ctx", "--ctx-size": "n_ctx", "-b": "n_batch", "--batch-size": "n_batch",
              "-np": "parallel", "--parallel": "parallel", "-t": "threads", "--threads": "threads",
              "-tb": "threads_batch", "--threads-batch": "threads_batch", "--threads-http": "threads_http",
              "-ngl": "n_gpu_layers", "--gpu-layers": "n_gpu_layers", "--n-gpu-layers": "n_gpu_layers"}
_ONE_VALUE = {"-m", "--model", *_INT_FLAGS, "--chat-template", "--chat-template-file", "--rpc", "--pooling"}
_HF = "the gateway loads local GGUF files only: download the model and set backend.model"
_HF_FLAGS = {"-hf", "-hfr", "--hf-repo", "-hff", "--hf-file", "-mu", "--model-url", "-dr", "--docker-repo"}
_MANAGED = {
    "--host": "the gateway runs llama-server on 127.0.0.1 and routes to it",
    "--port": "the gateway picks each replica's port",
    "--api-key": "clients' keys are the gateway's (GATEWAY_API_KEY); it talks to llama-server without",
    "--api-key-file": "clients' keys are the gateway's (GATEWAY_API_KEY)",
    "--hf-token": "only for -hf downloads, which the gateway does not do",
    "-hft": "only for -hf downloads, which the gateway does not do",
    "--ssl-key-file": "the gateway talks plain HTTP to its llama-server",
    "--ssl-cert-file": "the gateway talks plain HTTP to its llama-server",
}
SECRET_FLAGS = {"--api-key", "--hf-token", "-hft"}
_PATH_FLAGS = {"--mmproj", "-mm", "-md", "--model-draft", "--lora", "--control-vector", "--grammar-file"}
# Flags that change what a replica holds, which the memory estimate (backends/gguf/memory.py) does not model.
_UNCOUNTED = {"-ctk", "--cache-type-k", "-ctv", "--cache-type-v", "--mmproj", "-mm", "-md", "--model-draft",
              "-ub", "--ubatch-size", "-ot", "--override-tensor", "-nkvo", "--no-kv-offload", "-dev",
              "--device", "-sm", "--split-mode", "-ts", "--tensor-split", "-mg", "--main-gpu", "--lora",
              "-cmoe", "--cpu-moe"}
_ON = {"on", "true", "1", "enabled"}
_OFF = {"off", "false", "0", "disabled"}
# fmt: on


@dataclass
class _Read:
    """What the flags read so far make of the backend."""

    backend: dict[str, Any] = field(default_factory=lambda: {"kind": "llama_server"})
    extra: list[str] = field(default_factory=list)
    hf: str | None = None
    ctx_zero: str | None = None


def _flags(argv: list[str]) -> list[tuple[str, list[str], list[str]]]:
    """(flag, its values, its original tokens). llama-server has no positional arguments, so whatever
    follows a flag up to the next flag is that flag's value."""
    out: list[tuple[str, list[str], list[str]]] = []
    for arg in argv:
        is_flag = arg.startswith("-") and not re.match(r"^-\d", arg)
        if is_flag and arg.startswith("--") and "=" in arg:
            flag, _, value = arg.partition("=")
            out.append((flag, [value], [arg]))
        elif is_flag or not out:
            out.append((arg, [], [arg]))
        else:
            out[-1][1].append(arg)
            out[-1][2].append(arg)
    return out


def llama_server_backend(mid: str, argv: list[str], conv: Conversion) -> dict[str, Any] | None:
    read = _Read()
    for flag, values, tokens in _flags(argv[1:]):
        value = values[0] if len(values) == 1 else None
        shown = " ".join(tokens)
        if flag in _ONE_VALUE:
            _valued_flag(mid, flag, value, shown, read, conv)
        else:
            _other_flag(mid, flag, value, tokens, read, conv)
    if "model" not in read.backend:
        conv.issue(
            mid,
            read.hf or "cmd",
            f"{_HF}: skipped" if read.hf else "no model file (-m) in the command: skipped",
        )
        return None
    return _complete(mid, argv[0], read, conv)


def _valued_flag(mid: str, flag: str, value: str | None, shown: str, read: _Read, conv: Conversion) -> None:
    backend = read.backend
    if value is None:
        conv.issue(mid, shown, "expected one value")
    elif flag in _INT_FLAGS:
        key = _INT_FLAGS[flag]
        if key == "n_gpu_layers" and value in ("all", "auto"):
            backend[key] = -1
            if value == "auto":
                conv.issue(mid, shown, "the gateway has no 'auto': every layer offloaded (-1)", "warning")
        elif not re.match(r"^-?\d+$", value):
            conv.issue(mid, shown, "not a number")
        elif key == "n_ctx" and int(value) == 0:
            read.ctx_zero = shown  # the training context, once the model is known
        elif key in ("parallel", "threads", "threads_batch", "threads_http") and int(value) <= 0:
            conv.issue(mid, shown, "llama-server picks it itself: the gateway's default applies", "note")
        else:
            backend[key] = int(value)
    elif flag in ("-m", "--model"):
        backend["model"] = str(local_path(value, conv.source.parent))
    elif flag == "--chat-template":
        backend["chat_template"] = value
    elif flag == "--chat-template-file":
        backend["chat_template_file"] = str(local_path(value, conv.source.parent))
    elif flag == "--rpc":
        backend["rpc"] = [w.strip() for w in value.split(",") if w.strip()]
    elif value in ("mean", "cls", "last"):
        backend["pooling"] = value
    else:
        conv.issue(mid, shown, "the gateway pools by mean, cls or last")


def _other_flag(
    mid: str, flag: str, value: str | None, tokens: list[str], read: _Read, conv: Conversion
) -> None:
    shown = " ".join(tokens)
    if flag in ("-fa", "--flash-attn"):
        if value is None or value.lower() in _ON:
            read.backend["flash_attn"] = True
        elif value.lower() in _OFF:
            read.backend["flash_attn"] = False
        else:
            conv.issue(
                mid,
                shown,
                "the gateway passes -fa on or off: off (set flash_attn: true to use it)",
                "warning",
            )
    elif flag in ("--embedding", "--embeddings"):
        read.backend["embeddings"] = True
    elif flag in ("-cb", "--cont-batching", "-nocb", "--no-cont-batching"):
        read.backend["cont_batching"] = "no" not in flag
    elif flag == "--metrics":
        pass  # the gateway always passes it
    elif flag in _HF_FLAGS:
        read.hf = shown  # reported below, with what became of the model
    elif flag in _MANAGED:
        conv.issue(
            mid,
            flag if flag in SECRET_FLAGS else shown,
            _MANAGED[flag],
            "note" if flag in ("--host", "--port") else "not carried",
        )
    else:
        if flag in _PATH_FLAGS and value is not None:
            tokens = [flag, str(local_path(value, conv.source.parent))]
        read.extra += tokens
        if flag in _UNCOUNTED:
            conv.issue(
                mid,
                shown,
                "passed to llama-server unchanged (extra_args), but the gateway's memory "
                "estimate and GPU placement do not count it: set memory: if it is off",
                "warning",
            )
        else:
            conv.issue(mid, shown, "passed to llama-server unchanged (extra_args)", "note")


def _complete(mid: str, program: str, read: _Read, conv: Conversion) -> dict[str, Any]:
    """The backend once every flag is read: what the model file and the absent flags mean."""
    backend = read.backend
    if read.hf:
        conv.issue(mid, read.hf, "-m names the local file, which the gateway loads")
    if read.ctx_zero is not None and (
        ctx := ctx_from_model(conv, mid, read.ctx_zero, Path(backend["model"]))
    ):
        backend["n_ctx"] = ctx
    if "/" in program or "\\" in program:
        binary = local_path(program, conv.source.parent)
        if binary.is_file():
            backend["binary"] = str(binary)
        else:
            conv.issue(
                mid,
                program,
                "not on this machine: the gateway's llama-server is used "
                "(GATEWAY_LLAMA_SERVER, PATH, or `llm-gateway build-llama-server`)",
                "warning",
            )
    if "n_gpu_layers" not in backend:
        conv.issue(
            mid,
            "-ngl (absent)",
            "recent llama-server offloads what fits by default; the gateway passes "
            "-ngl 0 (CPU only) unless n_gpu_layers is set",
            "warning",
        )
    if "n_ctx" not in backend and read.ctx_zero is None:
        conv.issue(
            mid,
            "-c (absent)",
            "the gateway passes -c 4096 (n_ctx's default); llama-server's own default depends on its version",
            "note",
        )
    if read.extra:
        backend["extra_args"] = read.extra
    return backend
