"""``llm-gateway import``: llama-cpp-python and llama-swap configs (tests/import_samples/) become manifests
that the gateway's own loader accepts, and every setting that does not carry over is reported."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from backends.llama_cpp.spec import LlamaCppBackend
from backends.llama_server.spec import LlamaServerBackend
from backends.remote.spec import RemoteBackend
from gateway.cli.importing import Conversion, Issue, SourceError, convert, report, write
from gateway.config.loading import load_directory
from gateway.config.manifest import ModelManifest
from tests.synthetic_gguf import Shape, write_model

SAMPLES = Path(__file__).parent / "import_samples"
CLI = Path(sys.executable).parent / "llm-gateway"
TRAIN_CTX = 8192  # the synthetic models' training context: what n_ctx 0 becomes

# The GGUF files the samples name, relative to the samples; the llama-swap sample's -hf model has none.
MODEL_FILES = [
    "models/OpenHermes-2.5-Mistral-7B-GGUF/openhermes-2.5-mistral-7b.Q4_K_M.gguf",
    "models/ggml_llava-v1.5-7b/ggml-model-q4_k.gguf",
    "models/nomic-embed-text-v1.5.Q8_0.gguf",
    "models/replit-code-v1_5-3b-GGUF/replit-code-v1_5-3b.Q4_0.gguf",
    "models/qwen2.5-0.5b-instruct-q4_k_m.gguf",
    "models/qwen2.5-coder-7b-instruct-q4_k_m.gguf",
    "models/Llama-3.2-1B-Instruct-Q4_K_M.gguf",
    "models/tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf",
]


@pytest.fixture
def src(tmp_path: Path) -> Path:
    """The samples with small synthetic GGUFs at the paths they name (the loader requires the files)."""
    directory = tmp_path / "src"
    shutil.copytree(SAMPLES, directory)
    first = write_model(tmp_path / "synthetic.gguf", Shape(ctx_train=TRAIN_CTX))
    for rel in MODEL_FILES:
        (directory / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(first, directory / rel)
    return directory


def run_cli(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), "import", *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def loaded(out: Path) -> dict[str, ModelManifest]:
    """What the gateway would serve from ``out``; the loader must accept every file."""
    result = load_directory(out)
    assert result.problems == []
    return {item.manifest.name: item.manifest for item in result.models}


def has_issue(issues: list[Issue], model: str, setting: str, kind: str = "not carried") -> Issue:
    found = [i for i in issues if i.model == model and setting in i.setting and i.kind == kind]
    assert found, f"no {kind} issue for {model} {setting} in {[(i.model, i.setting, i.kind) for i in issues]}"
    return found[0]


def report_line(text: str, *parts: str) -> str:
    lines = [line for line in text.splitlines() if all(p in line for p in parts)]
    assert lines, f"no report line with {parts}:\n{text}"
    return lines[0]


def test_cli_imports_the_documented_llama_cpp_python_config(src: Path) -> None:
    done = run_cli("llama-cpp-python.json", "--out", "out", cwd=src)
    assert done.returncode == 0, done.stderr
    models = loaded(src / "out")
    assert set(models) == {"gpt-3.5-turbo", "gpt-4-vision-preview", "text-embedding-3-small", "copilot-codex"}

    # gpt-3.5-turbo and gpt-4 had the same settings: one engine, answering to both names.
    chat = models["gpt-3.5-turbo"]
    assert chat.aliases == ["gpt-4"]
    assert isinstance(chat.backend, LlamaCppBackend)
    assert chat.backend.model == src / MODEL_FILES[0]
    assert (chat.backend.n_ctx, chat.backend.n_gpu_layers, chat.backend.n_threads) == (2048, -1, 12)
    assert chat.backend.chat_format == "chatml"

    embed = models["text-embedding-3-small"].backend
    assert isinstance(embed, LlamaCppBackend)
    assert embed.embeddings is True
    assert embed.n_ctx == TRAIN_CTX  # n_ctx 0: the model's training context, read from the GGUF
    codex = models["copilot-codex"].backend
    assert isinstance(codex, LlamaCppBackend)
    assert (codex.n_ctx, codex.n_batch) == (9216, 1024)
    vision = models["gpt-4-vision-preview"].backend
    assert isinstance(vision, LlamaCppBackend)
    assert vision.chat_format is None  # llava-1-5 is a multimodal handler the llama_cpp kind lacks

    # Each unsupported setting is printed with file, model, setting and why.
    out = done.stdout
    assert "Not carried over" in out
    report_line(out, "llama-cpp-python.json", "gpt-4-vision-preview", "clip_model_path=", "multimodal")
    report_line(out, "llama-cpp-python.json", "gpt-4-vision-preview", "chat_format=llava-1-5")
    report_line(out, "llama-cpp-python.json", "copilot-codex", "offload_kqv=false")
    report_line(out, "llama-cpp-python.json", "copilot-codex", "cache=true")
    report_line(out, "llama-cpp-python.json", "host=0.0.0.0", "--host")
    report_line(out, "text-embedding-3-small", "embedding=true", "/v1/embeddings only")
    # The written manifest says the same in its header.
    header = (src / "out" / "copilot-codex.yaml").read_text()
    assert "# not carried: offload_kqv=false" in header


def test_llama_cpp_python_yaml_without_alias_and_from_hugging_face(src: Path, tmp_path: Path) -> None:
    conv = convert(src / "llama-cpp-python.yaml")
    result = write(conv, tmp_path / "out")
    models = loaded(tmp_path / "out")
    # No model_alias: llama-cpp-python answered to the path, which stays an alias.
    assert list(models) == ["qwen2.5-0.5b-instruct-q4_k_m"]
    model = models["qwen2.5-0.5b-instruct-q4_k_m"]
    assert model.aliases == ["models/qwen2.5-0.5b-instruct-q4_k_m.gguf"]
    assert isinstance(model.backend, LlamaCppBackend)
    assert (model.backend.n_ctx, model.backend.flash_attn) == (32768, True)
    assert "skipped" in has_issue(conv.issues, "qwen-1.5b", "hf_model_repo_id").why
    has_issue(conv.issues, "models/qwen2.5-0.5b-instruct-q4_k_m.gguf", "type_k=8")
    has_issue(conv.issues, "models/qwen2.5-0.5b-instruct-q4_k_m.gguf", "rope_freq_base")
    # The API key is reported as a setting, but its value is never printed.
    assert has_issue(conv.issues, "", "api_key").setting == "api_key"
    text = report(conv, result, tmp_path / "out")
    assert "sk-local-only" not in text
    assert "sk-local-only" not in (tmp_path / "out" / "qwen2.5-0.5b-instruct-q4_k_m.yaml").read_text()


def test_llama_cpp_python_defaults_are_kept(tmp_path: Path) -> None:
    write_model(tmp_path / "m.gguf")
    (tmp_path / "config.json").write_text('{"models": [{"model": "m.gguf", "model_alias": "local"}]}')
    write(convert(tmp_path / "config.json"), tmp_path / "out")
    backend = loaded(tmp_path / "out")["local"].backend
    assert isinstance(backend, LlamaCppBackend)
    assert backend.n_ctx == 2048  # llama-cpp-python's default, not the gateway's 4096


def test_llama_swap_config(src: Path, tmp_path: Path) -> None:
    conv = convert(src / "llama-swap.yaml")
    assert conv.format == "llama-swap"
    result = write(conv, tmp_path / "out")
    models = loaded(tmp_path / "out")
    assert set(models) == {"qwen2.5-coder-7b", "llama-3.2-1b", "nomic-embed", "tinyllama-rpc", "qwen-vllm"}
    assert len(result.written) == 5

    coder = models["qwen2.5-coder-7b"]
    assert coder.aliases == ["gpt-4o-mini", "coder"]
    assert coder.idle_ttl == 300
    spec = coder.backend
    assert isinstance(spec, LlamaServerBackend)
    assert spec.model == src / "models/qwen2.5-coder-7b-instruct-q4_k_m.gguf"
    assert spec.n_ctx == 8192  # ${default-ctx}, a global macro
    assert (spec.parallel, spec.n_gpu_layers, spec.flash_attn, spec.cont_batching) == (4, 99, True, True)
    assert spec.extra_args == ["--jinja"]
    assert spec.load_timeout == 300  # healthCheckTimeout

    small = models["llama-3.2-1b"]
    assert small.aliases == ["gpt-3.5-turbo"]  # an alias given as {id, name}
    assert small.idle_ttl is None  # ttl 0: never unloaded
    assert "Llama 3.2 1B" in small.description
    spec = small.backend
    assert isinstance(spec, LlamaServerBackend)
    assert spec.n_ctx == 16384  # the model's own macro overrides the global one
    assert (spec.threads, spec.chat_template, spec.flash_attn) == (8, "llama3", True)
    assert spec.extra_args == ["--cache-type-k", "q8_0"]

    embed = models["nomic-embed"]
    assert embed.aliases == ["text-embedding-3-small"]
    assert embed.idle_ttl == 900  # globalTTL
    spec = embed.backend
    assert isinstance(spec, LlamaServerBackend)
    assert (spec.embeddings, spec.pooling, spec.n_ctx, spec.n_batch, spec.n_gpu_layers) == (
        True,
        "mean",
        2048,
        2048,
        0,
    )
    assert spec.binary is None  # /opt/llama.cpp/... is not on this machine
    rpc = models["tinyllama-rpc"].backend
    assert isinstance(rpc, LlamaServerBackend)
    assert rpc.rpc == ["10.0.0.2:50052", "10.0.0.3:50052"]

    # Not llama-server: a remote upstream at `proxy`, whose ${PORT} is what llama-swap would have given it
    # (startPort 9100, models in sorted order: gemma-hf, llama-3.2-1b, nomic-embed, qwen-vllm).
    remote = models["qwen-vllm"].backend
    assert isinstance(remote, RemoteBackend)
    assert remote.endpoints[0].url == "http://127.0.0.1:9103"
    assert remote.endpoints[0].max_concurrency == 8
    assert remote.upstream_model == "Qwen/Qwen2.5-7B-Instruct-AWQ"
    assert "will not launch" in has_issue(conv.issues, "qwen-vllm", "cmd", "warning").why

    assert "skipped" in has_issue(conv.issues, "gemma-hf", "-hf ggml-org/gemma-3-4b-it-GGUF:Q4_K_M").why
    has_issue(conv.issues, "qwen2.5-coder-7b", "env CUDA_VISIBLE_DEVICES=0")
    has_issue(conv.issues, "qwen2.5-coder-7b", "filters=")
    has_issue(conv.issues, "qwen2.5-coder-7b", "hooks.on_startup.preload")
    has_issue(conv.issues, "llama-3.2-1b", "unlisted=true")
    has_issue(conv.issues, "llama-3.2-1b", "-ngl (absent)", "warning")
    has_issue(conv.issues, "", "groups.embeddings")
    has_issue(conv.issues, "", "apiKeys")
    text = report(conv, result, tmp_path / "out")
    assert "sk-hunter2" not in text
    report_line(text, "llama-swap.yaml", "qwen2.5-coder-7b", "filters=", "request bodies")


def test_a_model_file_missing_here_is_written_with_a_warning(src: Path, tmp_path: Path) -> None:
    (src / "models/tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf").unlink()
    result = write(convert(src / "llama-swap.yaml"), tmp_path / "out")
    assert tmp_path / "out" / "tinyllama-rpc.yaml" in result.written
    warning = has_issue(result.issues, "tinyllama-rpc", "backend.model", "warning")
    assert "file not found" in warning.why
    problems = load_directory(tmp_path / "out").problems
    assert [(p.file.name, p.field) for p in problems] == [("tinyllama-rpc.yaml", "backend.model")]


def test_never_writes_a_manifest_the_gateway_refuses(tmp_path: Path) -> None:
    write_model(tmp_path / "m.gguf")
    (tmp_path / "config.yaml").write_text(
        "models:\n"
        "  too-many-slots:\n"
        "    cmd: llama-server --port ${PORT} -m m.gguf -np 1000\n"
        "  fine:\n"
        "    cmd: llama-server --port ${PORT} -m m.gguf -np 2\n"
    )
    conv = convert(tmp_path / "config.yaml")
    result = write(conv, tmp_path / "out")
    assert [p.name for p in result.written] == ["fine.yaml"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["fine.yaml"]
    refused = has_issue(result.issues, "too-many-slots", "backend.parallel")
    assert "not written" in refused.why
    assert list(loaded(tmp_path / "out")) == ["fine"]


def test_names_already_declared_in_out_are_not_written_again(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    model = src / "models/qwen2.5-coder-7b-instruct-q4_k_m.gguf"
    (out / "mine.yaml").write_text(
        yaml.safe_dump(
            {"name": "mine", "aliases": ["coder"], "backend": {"kind": "llama_cpp", "model": str(model)}}
        )
    )
    result = write(convert(src / "llama-swap.yaml"), out)
    assert out / "qwen2.5-coder-7b.yaml" not in result.written
    assert "mine.yaml" in has_issue(result.issues, "qwen2.5-coder-7b", "name").why
    assert "qwen2.5-coder-7b" not in loaded(out)


def test_macros_from_the_environment_and_unknown_macros(tmp_path: Path) -> None:
    write_model(tmp_path / "m.gguf")
    (tmp_path / "config.yaml").write_text(
        "macros:\n"
        '  dir: "${env.MODEL_HOME}"\n'
        "models:\n"
        "  good:\n"
        "    cmd: llama-server --port ${PORT} -m ${dir}/m.gguf -c 1024\n"
        "  typo:\n"
        "    cmd: llama-server --port ${PORT} -m ${dri}/m.gguf\n"
    )
    conv = convert(tmp_path / "config.yaml", env={"MODEL_HOME": str(tmp_path)})
    assert [p.name for p in conv.models] == ["good"]
    assert conv.models[0].doc["backend"]["model"] == str(tmp_path / "m.gguf")
    assert "unknown macro" in has_issue(conv.issues, "typo", "${dri}").why
    with pytest.raises(SourceError, match="MODEL_HOME"):
        convert(tmp_path / "config.yaml", env={})


def test_existing_files_are_kept_unless_force(src: Path) -> None:
    assert run_cli("llama-swap.yaml", "--out", "out", cwd=src).returncode == 0
    mine = src / "out" / "nomic-embed.yaml"
    mine.write_text("# edited by hand\n" + mine.read_text())

    again = run_cli("llama-swap.yaml", "--out", "out", cwd=src)
    assert again.returncode == 1
    assert "nomic-embed.yaml" in again.stderr and "--force" in again.stderr
    assert mine.read_text().startswith("# edited by hand")

    forced = run_cli("llama-swap.yaml", "--out", "out", "--force", cwd=src)
    assert forced.returncode == 0, forced.stderr
    assert not mine.read_text().startswith("# edited by hand")
    assert "nomic-embed" in loaded(src / "out")


def test_malformed_source_exits_1_naming_the_file(src: Path) -> None:
    done = run_cli("malformed.yaml", "--out", "out", cwd=src)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "malformed.yaml" in done.stderr
    assert not (src / "out").exists()
    missing = run_cli("no-such-config.yaml", "--out", "out", cwd=src)
    assert missing.returncode == 1 and "no-such-config.yaml" in missing.stderr


def test_the_format_must_match_when_given(src: Path) -> None:
    with pytest.raises(SourceError, match=r"llama-cpp-python\.json"):
        convert(src / "llama-cpp-python.json", "llama-swap")
    assert isinstance(convert(src / "llama-swap.yaml", "llama-swap"), Conversion)


def test_secrets_stay_out_of_the_report_and_the_manifests(tmp_path: Path) -> None:
    write_model(tmp_path / "m.gguf", Shape(ctx_train=TRAIN_CTX))
    (tmp_path / "config.yaml").write_text(
        "models:\n"
        "  keyed:\n"  # a fixed port and no ${PORT}: llama-swap's proxy would say where; the gateway picks one
        "    cmd: env HF_TOKEN=hf_secret llama-server --port 9999 -m m.gguf --api-key sk-secret -c 0\n"
        "    proxy: http://127.0.0.1:9999\n"
    )
    conv = convert(tmp_path / "config.yaml")
    result = write(conv, tmp_path / "out")
    spec = loaded(tmp_path / "out")["keyed"].backend
    assert isinstance(spec, LlamaServerBackend)
    assert spec.n_ctx == TRAIN_CTX  # -c 0: the training context
    assert spec.extra_args == []  # --api-key is not passed on: the gateway talks to its own replicas
    has_issue(conv.issues, "keyed", "--api-key")
    has_issue(conv.issues, "keyed", "env HF_TOKEN=***")
    written = (tmp_path / "out" / "keyed.yaml").read_text()
    for secret in ("hf_secret", "sk-secret"):
        assert secret not in report(conv, result, tmp_path / "out")
        assert secret not in written


def test_a_setting_of_the_wrong_type_is_an_invalid_source(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("models:\n  m:\n    cmd: llama-server -m m.gguf\n    ttl: soon\n")
    with pytest.raises(SourceError, match=r"config\.yaml: not a valid llama-swap config"):
        convert(tmp_path / "config.yaml")
