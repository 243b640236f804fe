"""llama-cpp-python's server config (``python3 -m llama_cpp.server --config_file``: server settings and a
``models:`` list) to llama_cpp manifests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gateway.cli.importing.report import Conversion, Planned
from gateway.cli.importing.values import VALID_NAME, ctx_from_model, local_path, manifest_doc, show, slugify

_SERVER = {
    "host": "a gateway setting: `llm-gateway serve --host` (GATEWAY_HOST)",
    "port": "a gateway setting: `llm-gateway serve --port` (GATEWAY_PORT)",
    "api_key": "a gateway setting: GATEWAY_API_KEY",
    "ssl_keyfile": "the gateway serves plain HTTP: terminate TLS in a proxy in front of it",
    "ssl_certfile": "the gateway serves plain HTTP: terminate TLS in a proxy in front of it",
    "interrupt_requests": "the gateway never interrupts a running stream: later requests wait in the queue",
    "disable_ping_events": "the gateway sends no ping events",
    "root_path": "the gateway serves at the root path: strip the prefix in a proxy in front of it",
}
# The settings the llama_cpp kind has no field for: llama-cpp-python's default (the gateway's engine, which
# leaves them to llama.cpp, does the same: carried in effect), and why any other value is not carried.
_GPU = "the llama_cpp kind does not choose or split GPUs: llama.cpp's default placement applies"
_DEFAULT = "no such setting in the llama_cpp kind: llama.cpp's default applies"
_CACHE = "no prompt cache setting (affinity: session sends a conversation back to its instance)"
_LORA = "LoRA adapters are not supported by the llama_cpp kind (llama_server: --lora in extra_args)"
_HF_TOKENIZER = "Hugging Face tokenizers are not supported: the GGUF's own tokenizer is used"
_DRAFT = "speculative decoding is not supported by the llama_cpp kind"
_KV_TYPE = "KV cache quantisation is not supported by the llama_cpp kind (llama_server: -ctk/-ctv)"
# fmt: off
_UNMAPPED: dict[str, tuple[Any, str]] = {
    "split_mode": (1, _GPU), "main_gpu": (0, _GPU), "tensor_split": (None, _GPU),
    "vocab_only": (False, "a vocabulary-only model cannot serve requests"),
    "use_mmap": (True, "the llama_cpp kind keeps llama.cpp's default (mmap on); llama_server: --no-mmap"),
    "use_mlock": (False, "the llama_cpp kind keeps llama.cpp's default (mlock off); llama_server: --mlock"),
    "kv_overrides": (None, "no setting for GGUF metadata overrides (llama_server: --override-kv)"),
    "rpc_servers": (None, "RPC offload needs the llama_server kind (backend.rpc)"),
    "n_threads_batch": (None, "no setting in the llama_cpp kind (the llama_server kind has threads_batch)"),
    "n_ubatch": (512, _DEFAULT), "rope_scaling_type": (-1, _DEFAULT), "rope_freq_base": (0.0, _DEFAULT),
    "rope_freq_scale": (0.0, _DEFAULT), "yarn_ext_factor": (-1.0, _DEFAULT),
    "yarn_attn_factor": (1.0, _DEFAULT),
    "yarn_beta_fast": (32.0, _DEFAULT), "yarn_beta_slow": (1.0, _DEFAULT), "yarn_orig_ctx": (0, _DEFAULT),
    "mul_mat_q": (True, _DEFAULT), "last_n_tokens_size": (64, _DEFAULT), "numa": (False, _DEFAULT),
    "logits_all": (True, "no such setting in the llama_cpp kind"),
    "offload_kqv": (True, "the KV cache follows the offloaded layers (llama.cpp's default); no setting"),
    "lora_base": (None, _LORA), "lora_path": (None, _LORA),
    "chat_template_kwargs": (None, "no per-model chat template arguments"),
    "clip_model_path": (None, "the llama_cpp kind has no multimodal (CLIP) chat handlers; the llama_server "
                        "kind serves images with --mmproj in extra_args"),
    "cache": (False, _CACHE), "cache_type": ("ram", _CACHE), "cache_size": (2 << 30, _CACHE),
    "hf_tokenizer_config_path": (None, _HF_TOKENIZER),
    "hf_pretrained_model_name_or_path": (None, _HF_TOKENIZER),
    "draft_model": (None, _DRAFT), "draft_model_num_pred_tokens": (10, _DRAFT),
    "type_k": (None, _KV_TYPE), "type_v": (None, _KV_TYPE),
}
_MULTIMODAL_FORMATS = {"llava-1-5", "llava-1-6", "obsidian", "moondream", "nanollava", "llama-3-vision-alpha",
                       "minicpm-v-2.6", "qwen2.5-vl", "mtmd", "gemma4"}
_CARRIED = {"model", "model_alias", "hf_model_repo_id", "n_ctx", "n_batch", "n_gpu_layers", "n_threads",
            "seed", "flash_attn", "chat_format", "embedding"}
# fmt: on


def plan_llama_cpp_python(raw: dict[str, Any], conv: Conversion) -> None:
    for key, value in raw.items():
        if key == "models":
            continue
        why = _SERVER.get(key, "not a llama-cpp-python server setting (llama-cpp-python refuses it)")
        conv.issue("", key if key == "api_key" else f"{key}={show(value)}", why)
    # Entries that differ only in model_alias are one engine with several names: one manifest, one load.
    groups: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for i, entry in enumerate(raw["models"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("model"), str):
            conv.issue(f"models[{i}]", "model", "an entry needs `model` (a path): skipped")
            continue
        key = json.dumps({k: v for k, v in entry.items() if k != "model_alias"}, sort_keys=True, default=str)
        groups.setdefault(key, []).append((i, entry))
    for members in groups.values():
        _plan_model(members, conv)
    first = next(iter(groups.values()), None)
    if first:
        conv.issue(
            _entry_id(first[0][1]),
            "(the default model)",
            "llama-cpp-python answered unknown model names "
            "with its first model; the gateway answers 404 model_not_found",
            "note",
        )


def _entry_id(entry: dict[str, Any]) -> str:
    return str(entry.get("model_alias") or entry["model"])


def _plan_model(members: list[tuple[int, dict[str, Any]]], conv: Conversion) -> None:
    entry = members[0][1]
    origin = _entry_id(entry)
    origins = [_entry_id(e) for _, e in members]
    base = conv.source.parent
    if entry.get("hf_model_repo_id"):
        conv.issue(
            origin,
            f"hf_model_repo_id={entry['hf_model_repo_id']}",
            "the gateway loads local GGUF files "
            f"only: download {entry['model']} from that repository and import again: skipped",
        )
        return
    model = local_path(entry["model"], base)
    names = _names(members, origin, conv)
    backend = _backend(entry, origin, model, conv)
    _report_other_settings(entry, origin, conv)
    if len(members) > 1:
        conv.issue(
            origin,
            "model_alias",
            f"{len(members)} entries with the same settings ({', '.join(origins)}) "
            "became one model with aliases: one load serves them all",
            "note",
        )
    conv.models.append(Planned(names[0], origins, manifest_doc(names[0], names[1:], "", backend)))


def _names(members: list[tuple[int, dict[str, Any]]], origin: str, conv: Conversion) -> list[str]:
    names: list[str] = []
    for _, e in members:
        alias = e.get("model_alias")
        if alias is None:
            path_id = e["model"]
            names.append(slugify(Path(path_id).stem))
            if VALID_NAME.match(path_id):
                names.append(path_id)
            else:
                conv.issue(
                    origin,
                    f"model={path_id}",
                    f"llama-cpp-python also answered to the path as a name; "
                    f"clients must now send '{names[-1]}'",
                    "warning",
                )
        elif isinstance(alias, str) and VALID_NAME.match(alias):
            names.append(alias)
        else:
            slug = slugify(str(alias))
            conv.issue(
                origin, f"model_alias={show(alias)}", f"not a valid model name: '{slug}' instead", "warning"
            )
            names.append(slug)
    return list(dict.fromkeys(names))


def _backend(entry: dict[str, Any], origin: str, model: Path, conv: Conversion) -> dict[str, Any]:
    backend: dict[str, Any] = {"kind": "llama_cpp", "model": str(model)}
    n_ctx = entry.get("n_ctx", 2048)  # llama-cpp-python's default; the gateway's is 4096
    if n_ctx == 0:
        n_ctx = ctx_from_model(conv, origin, "n_ctx=0", model)
    if n_ctx is not None:
        backend["n_ctx"] = n_ctx
    for key in ("n_batch", "n_gpu_layers", "flash_attn", "seed"):
        if key in entry:
            backend[key] = entry[key]
    threads = entry.get("n_threads")
    if threads is not None and threads != -1:  # -1: every core, the gateway's default for one instance
        backend["n_threads"] = threads
    chat_format = entry.get("chat_format")
    if chat_format in _MULTIMODAL_FORMATS:
        conv.issue(
            origin,
            f"chat_format={chat_format}",
            "a multimodal chat handler, which the llama_cpp kind "
            "does not have: the model's own chat template is used, for text only",
        )
    elif chat_format in ("hf-autotokenizer", "hf-tokenizer-config"):
        conv.issue(
            origin,
            f"chat_format={chat_format}",
            "Hugging Face tokenizer templates are not supported: the model's own chat template is used",
        )
    elif chat_format is not None:
        backend["chat_format"] = chat_format
    if entry.get("embedding"):
        backend["embeddings"] = True
        conv.issue(
            origin,
            "embedding=true",
            "embeddings: true serves /v1/embeddings only (llama-cpp-python also "
            "answered chat with it), pooled by mean unless pooling says otherwise",
            "warning",
        )
    return backend


def _report_other_settings(entry: dict[str, Any], origin: str, conv: Conversion) -> None:
    for key, value in entry.items():
        if key in _CARRIED:
            continue
        default, why = _UNMAPPED.get(key, (None, ""))
        if key == "verbose":
            conv.issue(origin, f"{key}={show(value)}", "the gateway runs its engines quietly", "note")
        elif not why:
            conv.issue(origin, f"{key}={show(value)}", "not a llama-cpp-python model setting (it refuses it)")
        elif value == default:
            conv.issue(
                origin, f"{key}={show(value)}", "the default, which the gateway's engine also uses", "note"
            )
        else:
            conv.issue(origin, f"{key}={show(value)}", why)
