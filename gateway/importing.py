"""``llm-gateway import``: manifests from a llama-cpp-python server config file or a llama-swap config.

``convert`` is the conversion, data to data: it reads the source and, for paths, whether a file exists and a
GGUF's training context, and returns the planned manifests with one ``Issue`` for every setting that is not
carried over exactly (``not carried``: dropped, with why; ``warning``: carried, but behaves differently or
needs a look; ``note``: carried, or dropped with no effect). Nothing is dropped without an issue.

``write`` puts them in ``--out`` only once the gateway's own loader (``gateway.manifests.load_directory``,
what ``llm-gateway check`` runs) accepts them in a scratch directory, so an import never leaves a manifest the
gateway would refuse. The one exception is a model file missing on this machine (the source may describe
another one): that manifest is written, with a warning. After writing, ``--out`` is loaded again and what the
loader says about the written files is the result.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any, Literal

import yaml

from gateway.config import NAME_PATTERN
from gateway.gguf_meta import read_metadata
from gateway.manifests import load_directory, load_file

Format = Literal["auto", "llama-cpp-python", "llama-swap"]
Kind = Literal["not carried", "warning", "note"]
_NAME = re.compile(NAME_PATTERN)


class SourceError(ValueError):
    """The source cannot be read or is not a config of the expected kind; the message is one line."""


@dataclass(frozen=True)
class Issue:
    file: Path
    model: str  # the model's id in the source ("" for a server-wide setting), or the manifest's name
    setting: str
    why: str
    kind: Kind = "not carried"


@dataclass
class Planned:
    name: str
    origins: list[str]  # the source's ids of the models merged into this manifest
    doc: dict[str, Any]
    comments: list[str] = field(default_factory=list)


@dataclass
class Conversion:
    source: Path
    format: str
    models: list[Planned] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)

    def issue(self, model: str, setting: str, why: str, kind: Kind = "not carried") -> None:
        self.issues.append(Issue(self.source, model, setting, why, kind))


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def read_source(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"{path}: cannot read: {_one_line(exc)}") from exc
    try:
        raw = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        what = "JSON" if path.suffix.lower() == ".json" else "YAML"
        raise SourceError(f"{path}: not valid {what}: {_one_line(exc)}") from exc
    if not isinstance(raw, dict):
        raise SourceError(f"{path}: expected a mapping with `models:` at the top level")
    return raw


def convert(path: Path, fmt: Format = "auto", env: Mapping[str, str] | None = None) -> Conversion:
    """Plan the manifests for ``path``. Raises ``SourceError`` for an unreadable or unrecognised source."""
    raw = read_source(path)
    models = raw.get("models")
    found = (
        "llama-cpp-python" if isinstance(models, list) else "llama-swap" if isinstance(models, dict) else None
    )
    if found is None or (fmt != "auto" and fmt != found):
        expected = {"auto": "a `models:` list (llama-cpp-python) or map (llama-swap)"}.get(
            fmt, "a `models:` list" if fmt == "llama-cpp-python" else "a `models:` map"
        )
        raise SourceError(f"{path}: not a {fmt if fmt != 'auto' else 'known'} config: expected {expected}")
    if not models:
        raise SourceError(f"{path}: declares no models")
    conv = Conversion(path, found)
    try:
        if found == "llama-cpp-python":
            _llama_cpp_python(raw, conv)
        else:
            _llama_swap(raw, conv, os.environ if env is None else env)
    except SourceError:
        raise
    except (ValueError, TypeError, AttributeError) as exc:  # a value of the wrong type, e.g. ttl: soon
        raise SourceError(f"{path}: not a valid {found} config: {_one_line(exc)}") from exc
    _dedupe(conv)
    for planned in conv.models:
        header = (
            f"Imported by `llm-gateway import` from {path.resolve()} ({found}: {', '.join(planned.origins)})."
        )
        dropped = [i for i in conv.issues if i.model in planned.origins and i.kind != "note"]
        planned.comments[:0] = [header] + [f"{i.kind}: {i.setting}: {i.why}" for i in dropped]
    return conv


# -- shared helpers ------------------------------------------------------------------------------------------


def _local_path(value: str, base: Path) -> Path:
    """A file the source names: relative paths were relative to the server's working directory, taken to
    be the config's directory (then this one); the manifest gets an absolute path."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    for root in (base, Path.cwd()):
        if (root / path).is_file():
            return (root / path).resolve()
    return (base / path).resolve()


def _train_ctx(path: Path) -> int | None:
    try:
        meta = read_metadata(path)
    except (OSError, ValueError):
        return None
    value = meta.get(f"{meta.get('general.architecture')}.context_length")
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 16 else None


def _ctx_from_model(conv: Conversion, origin: str, setting: str, model: Path) -> int | None:
    ctx = _train_ctx(model)
    if ctx is None:
        conv.issue(
            origin,
            setting,
            "0 means the model's training context, which could not be read from "
            f"{model}: the gateway's default n_ctx (4096) applies; set n_ctx",
            "warning",
        )
    else:
        conv.issue(
            origin, setting, f"0 means the model's training context: n_ctx {ctx} (from the GGUF)", "note"
        )
    return ctx


def _show(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def _slug(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._:/\-]+", "-", text).strip("-")
    return re.sub(r"^[^A-Za-z0-9]+", "", slug) or "model"


def _duration(seconds: int) -> str:
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _dedupe(conv: Conversion) -> None:
    """Names and aliases must be unique across the import (the loader refuses a clash)."""
    taken: set[str] = set()
    for planned in conv.models:
        name = planned.name
        n = 2
        while name in taken:
            name, n = f"{planned.name}-{n}", n + 1
        if name != planned.name:
            conv.issue(planned.origins[0], "name", f"'{planned.name}' is taken: named '{name}'", "warning")
            planned.name = planned.doc["name"] = name
        taken.add(name)
        kept = []
        for alias in planned.doc.get("aliases", []):
            if alias in taken:
                conv.issue(planned.origins[0], f"alias {alias}", "already a name or alias of another model")
            else:
                taken.add(alias)
                kept.append(alias)
        if kept:
            planned.doc["aliases"] = kept
        else:
            planned.doc.pop("aliases", None)


def _manifest(name: str, aliases: list[str], description: str, backend: dict[str, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": name}
    if aliases:
        doc["aliases"] = aliases
    if description:
        doc["description"] = description
    doc["backend"] = backend
    return doc


# -- llama-cpp-python ----------------------------------------------------------------------------------------

_LCP_SERVER = {
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
_LCP_UNMAPPED: dict[str, tuple[Any, str]] = {
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
_LCP_CARRIED = {"model", "model_alias", "hf_model_repo_id", "n_ctx", "n_batch", "n_gpu_layers", "n_threads",
                "seed", "flash_attn", "chat_format", "embedding"}
# fmt: on


def _llama_cpp_python(raw: dict[str, Any], conv: Conversion) -> None:
    for key, value in raw.items():
        if key == "models":
            continue
        why = _LCP_SERVER.get(key, "not a llama-cpp-python server setting (llama-cpp-python refuses it)")
        conv.issue("", key if key == "api_key" else f"{key}={_show(value)}", why)
    # Entries that differ only in model_alias are one engine with several names: one manifest, one load.
    groups: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for i, entry in enumerate(raw["models"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("model"), str):
            conv.issue(f"models[{i}]", "model", "an entry needs `model` (a path): skipped")
            continue
        key = json.dumps({k: v for k, v in entry.items() if k != "model_alias"}, sort_keys=True, default=str)
        groups.setdefault(key, []).append((i, entry))
    for members in groups.values():
        _lcp_model(members, conv)
    first = next(iter(groups.values()), None)
    if first:
        conv.issue(
            _lcp_id(first[0][1]),
            "(the default model)",
            "llama-cpp-python answered unknown model names "
            "with its first model; the gateway answers 404 model_not_found",
            "note",
        )


def _lcp_id(entry: dict[str, Any]) -> str:
    return str(entry.get("model_alias") or entry["model"])


def _lcp_model(members: list[tuple[int, dict[str, Any]]], conv: Conversion) -> None:
    entry = members[0][1]
    origin = _lcp_id(entry)
    origins = [_lcp_id(e) for _, e in members]
    base = conv.source.parent
    if entry.get("hf_model_repo_id"):
        conv.issue(
            origin,
            f"hf_model_repo_id={entry['hf_model_repo_id']}",
            "the gateway loads local GGUF files "
            f"only: download {entry['model']} from that repository and import again: skipped",
        )
        return
    model = _local_path(entry["model"], base)
    names: list[str] = []
    for _, e in members:
        alias = e.get("model_alias")
        if alias is None:
            path_id = e["model"]
            names.append(_slug(Path(path_id).stem))
            if _NAME.match(path_id):
                names.append(path_id)
            else:
                conv.issue(
                    origin,
                    f"model={path_id}",
                    f"llama-cpp-python also answered to the path as a name; "
                    f"clients must now send '{names[-1]}'",
                    "warning",
                )
        elif isinstance(alias, str) and _NAME.match(alias):
            names.append(alias)
        else:
            slug = _slug(str(alias))
            conv.issue(
                origin, f"model_alias={_show(alias)}", f"not a valid model name: '{slug}' instead", "warning"
            )
            names.append(slug)
    names = list(dict.fromkeys(names))
    backend: dict[str, Any] = {"kind": "llama_cpp", "model": str(model)}
    n_ctx = entry.get("n_ctx", 2048)  # llama-cpp-python's default; the gateway's is 4096
    if n_ctx == 0:
        n_ctx = _ctx_from_model(conv, origin, "n_ctx=0", model)
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
    for key, value in entry.items():
        if key in _LCP_CARRIED:
            continue
        default, why = _LCP_UNMAPPED.get(key, (None, ""))
        if key == "verbose":
            conv.issue(origin, f"{key}={_show(value)}", "the gateway runs its engines quietly", "note")
        elif not why:
            conv.issue(
                origin, f"{key}={_show(value)}", "not a llama-cpp-python model setting (it refuses it)"
            )
        elif value == default:
            conv.issue(
                origin, f"{key}={_show(value)}", "the default, which the gateway's engine also uses", "note"
            )
        else:
            conv.issue(origin, f"{key}={_show(value)}", why)
    if len(members) > 1:
        conv.issue(
            origin,
            "model_alias",
            f"{len(members)} entries with the same settings ({', '.join(origins)}) "
            "became one model with aliases: one load serves them all",
            "note",
        )
    conv.models.append(Planned(names[0], origins, _manifest(names[0], names[1:], "", backend)))


# -- llama-swap ----------------------------------------------------------------------------------------------

_DOCKER = {"docker", "podman", "nerdctl"}
_MACRO = re.compile(r"\$\{([A-Za-z0-9_-]+)\}")
_ENV_MACRO = re.compile(r"\$\{env\.([A-Za-z_][A-Za-z0-9_]*)\}")
_SWAP_TOP = {
    "logLevel": "a gateway setting: `llm-gateway serve --log-level`",
    "logRequests": "the gateway's logging is set by --log-level",
    "logTimeFormat": "the gateway's logging is set by --log-level",
    "logToStdout": "the gateway's logging is set by --log-level; replica logs are at /admin/models/NAME/logs",
    "metricsMaxInMemory": "the gateway keeps no request history; metrics are on /metrics (Prometheus)",
    "captureBuffer": "the gateway keeps no request captures",
    "sendLoadingState": "the gateway sends no loading messages: a request waits for the load (or gets a 503)",
    "includeAliasesInList": "the gateway always lists aliases in /v1/models",
    "apiKeys": "a gateway setting: GATEWAY_API_KEY",
    "matrix": "no swap matrix: the gateway runs models side by side while the memory budget allows and "
    "evicts the least recently used idle one",
    "profiles": "no profiles: every model is addressed by its own name or alias",
    "peers": "declare a remote manifest per peer model (kind: remote, endpoints: [{url: PROXY}], "
    "upstream_model: ID)",
}
_SWAP_CONSUMED = {"models", "macros", "startPort", "globalTTL", "healthCheckTimeout", "groups", "hooks"}
# fmt: off
_SWAP_MODEL_KEYS = {"cmd", "aliases", "env", "ttl", "macros", "name", "description", "proxy", "useModelName",
                    "concurrencyLimit", "checkEndpoint", "cmdStop"}
# fmt: on
_SWAP_MODEL_WHY = {
    "unlisted": "the gateway lists every model in /v1/models",
    "filters": "the gateway does not rewrite request bodies",
    "metadata": "the gateway's /v1/models carries no metadata",
    "sendLoadingState": "the gateway sends no loading messages: a request waits for the load (or gets a 503)",
    "timeouts": "the gateway's upstream timeouts are not set per model",
}


def _macro_str(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)  # Go's %v


def _subst_env(value: Any, env: Mapping[str, str], missing: set[str]) -> Any:
    if isinstance(value, str):

        def one(m: re.Match[str]) -> str:
            if m.group(1) not in env:
                missing.add(m.group(1))
                return m.group(0)
            return env[m.group(1)]

        return _ENV_MACRO.sub(one, value)
    if isinstance(value, dict):
        return {k: _subst_env(v, env, missing) for k, v in value.items()}
    if isinstance(value, list):
        return [_subst_env(v, env, missing) for v in value]
    return value


def _llama_swap(raw: dict[str, Any], conv: Conversion, env: Mapping[str, str]) -> None:
    for key, value in raw.items():
        if key in _SWAP_CONSUMED:
            continue
        setting = key if key in ("apiKeys", "peers") else f"{key}={_show(value)}"
        conv.issue("", setting, _SWAP_TOP.get(key, "not a llama-swap setting"))
    for group, spec in (raw.get("groups") or {}).items():
        spec = spec if isinstance(spec, dict) else {}
        why = (
            "no groups: the gateway runs models side by side while the memory budget allows and evicts the "
            "least recently used idle one"
        )
        if spec.get("persistent"):
            why += "; pinned: true keeps a model from being evicted"
        conv.issue("", f"groups.{group} (members: {', '.join(map(str, spec.get('members', [])))})", why)
    for model in ((raw.get("hooks") or {}).get("on_startup") or {}).get("preload") or []:
        conv.issue(
            str(model),
            "hooks.on_startup.preload",
            "pinned: true loads a model at startup (and also keeps it from being evicted)",
        )
    missing: set[str] = set()
    global_macros = dict(_subst_env(raw.get("macros") or {}, env, missing))
    if missing:
        raise SourceError(f"{conv.source}: environment variable {sorted(missing)[0]} is not set (macros)")
    port = int(raw.get("startPort", 5800))
    defaults = {"ttl": int(raw.get("globalTTL", 0)), "health": raw.get("healthCheckTimeout")}
    for mid in sorted(raw["models"]):  # llama-swap hands out ${PORT} in this order
        cfg = raw["models"][mid]
        if not isinstance(cfg, dict):
            conv.issue(str(mid), "", "expected a mapping of model settings: skipped")
            continue
        cfg = _subst_env(cfg, env, missing)
        if missing:
            conv.issue(
                mid,
                f"${{env.{sorted(missing)[0]}}}",
                "the environment variable is not set (llama-swap refuses this config): skipped",
            )
            missing.clear()
            continue
        macros: dict[str, Any] = {"MODEL_ID": mid, **global_macros}
        macros.update(cfg.get("macros") or {})  # a model's own macro replaces a global one in place
        fields = {k: str(cfg.get(k) or "") for k in ("cmd", "proxy", "checkEndpoint", "name", "description")}
        fields["cmd"] = "\n".join(ln for ln in fields["cmd"].splitlines() if not ln.strip().startswith("#"))
        fields["proxy"] = fields["proxy"] or "http://localhost:${PORT}"
        if isinstance(cfg.get("aliases"), str):
            cfg["aliases"] = [cfg["aliases"]]
        aliases = [str(a.get("id", "")) if isinstance(a, dict) else str(a) for a in cfg.get("aliases") or []]
        for name, value in reversed(macros.items()):  # last defined first, as llama-swap does
            slug = f"${{{name}}}"
            fields = {k: v.replace(slug, _macro_str(value)) for k, v in fields.items()}
            aliases = [a.replace(slug, _macro_str(value)) for a in aliases]
        if "${PORT}" in fields["cmd"]:
            fields = {k: v.replace("${PORT}", str(port)) for k, v in fields.items()}
            port += 1
        leftover = _MACRO.search(fields["cmd"])
        if leftover:
            conv.issue(mid, leftover.group(0), "an unknown macro (llama-swap refuses this config): skipped")
            continue
        _swap_model(mid, cfg, fields, aliases, defaults, conv)
    if defaults["health"] is not None and not any(
        p.doc["backend"]["kind"] == "llama_server" for p in conv.models
    ):
        conv.issue(
            "", f"healthCheckTimeout={defaults['health']}", "only llama-server models have a load_timeout"
        )


def _swap_model(
    mid: str,
    cfg: dict[str, Any],
    fields: dict[str, str],
    aliases: list[str],
    defaults: dict[str, Any],
    conv: Conversion,
) -> None:
    try:
        argv = shlex.split("\n".join(ln.rstrip().removesuffix("\\") for ln in fields["cmd"].splitlines()))
    except ValueError as exc:
        conv.issue(mid, "cmd", f"cannot be split into arguments ({exc}): skipped")
        return
    envs: list[str] = []
    while argv and _is_env(argv[0]):
        envs += [] if argv[0] == "env" else [argv[0]]
        argv = argv[1:]
    if not argv:
        conv.issue(mid, "cmd", "no command: skipped")
        return
    server = Path(argv[0]).name.startswith("llama-server")
    backend = _llama_server(mid, argv, conv) if server else _remote(mid, argv, cfg, fields["proxy"], conv)
    if backend is None:
        return
    if server and defaults["health"] is not None:
        backend["load_timeout"] = max(15, int(defaults["health"]))  # llama-swap's own minimum
    for var in [*envs, *(cfg.get("env") or [])]:
        why = (
            "the manifest sets no environment for the process: set it in the gateway's environment"
            if server
            else "the gateway does not start this process"
        )
        conv.issue(mid, f"env {_redact(str(var))}", why)
    name = _slug(mid)
    if name != mid:
        conv.issue(mid, "name", f"not a valid model name: '{name}' instead", "warning")
    kept: list[str] = []
    for entry, alias in zip(cfg.get("aliases") or [], aliases, strict=True):
        if not _NAME.match(alias):
            conv.issue(mid, f"alias {alias}", "not a valid model name")
            continue
        if alias != name and alias not in kept:
            kept.append(alias)
        if isinstance(entry, dict) and (entry.get("name") or entry.get("unlisted")):
            conv.issue(
                mid,
                f"alias {alias}",
                "its display name and unlisted flag: the gateway lists every alias under its id",
                "note",
            )
    description = " - ".join(v for v in (fields["name"], fields["description"]) if v)
    doc = _manifest(name, kept, description, backend)
    ttl = int(cfg.get("ttl", -1))
    setting = f"ttl={ttl}" if ttl != -1 else f"globalTTL={defaults['ttl']}"
    ttl = defaults["ttl"] if ttl == -1 else ttl
    if ttl < 0:
        conv.issue(mid, setting, "must be -1 or more (llama-swap refuses it): no idle unload")
    elif ttl and server:
        doc["idle_ttl"] = _duration(ttl)
    elif ttl:
        conv.issue(mid, setting, "the gateway does not stop a server it did not start")
    for key, value in cfg.items():
        if key in _SWAP_MODEL_WHY:
            conv.issue(mid, f"{key}={_show(value)}", _SWAP_MODEL_WHY[key])
        elif key == "cmdStop":
            conv.issue(
                mid,
                f"cmdStop={value}",
                "the gateway stops its own processes (SIGTERM, then SIGKILL)"
                if server
                else "the gateway does not stop a server it did not start",
                "note",
            )
        elif key == "checkEndpoint" and (not server or fields["checkEndpoint"] != "/health"):
            conv.issue(
                mid,
                f"checkEndpoint={value}",
                "the gateway checks llama-server's /health"
                if server
                else "the gateway checks a remote server with GET /v1/models",
            )
        elif key == "proxy" and server:
            conv.issue(mid, f"proxy={value}", "the gateway picks the port and routes to it itself", "note")
        elif key == "useModelName" and server:
            conv.issue(
                mid, f"useModelName={value}", "llama-server serves its one model whatever the name", "note"
            )
        elif key == "concurrencyLimit" and server and value:
            conv.issue(
                mid,
                f"concurrencyLimit={value}",
                "each replica takes `parallel` (-np) requests at once; "
                "the rest wait in the gateway's queue (max_queue) instead of a 429",
            )
        elif key not in _SWAP_MODEL_KEYS:
            conv.issue(mid, f"{key}={_show(value)}", "not a llama-swap model setting")
    ran = " ".join(shlex.quote(a) for a in _redact_argv([*envs, *argv]))
    conv.models.append(Planned(name, [mid], doc, [f"llama-swap ran: {ran}"]))


def _redact(arg: str) -> str:
    """NAME=value with a name that says key, token, secret or password, value hidden."""
    name, eq, _ = arg.partition("=")
    return f"{name}{eq}***" if eq and re.search(r"key|token|secret|passw", name, re.IGNORECASE) else arg


def _redact_argv(args: list[str]) -> list[str]:
    """Keeps secrets out of the report and the manifests' comments."""
    out: list[str] = []
    for arg in args:
        flag, eq, _ = arg.partition("=")
        if out and out[-1] in _SECRET_FLAGS:
            out.append("***")
        elif flag in _SECRET_FLAGS and eq:
            out.append(f"{flag}=***")
        else:
            out.append(_redact(arg))
    return out


def _is_env(arg: str) -> bool:
    return arg == "env" or re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", arg) is not None


def _remote(
    mid: str, argv: list[str], cfg: dict[str, Any], proxy: str, conv: Conversion
) -> dict[str, Any] | None:
    if not re.match(r"^https?://[^\s]+$", proxy) or "${" in proxy:
        why = "a URL with no port: ${PORT} is not in cmd" if "${PORT}" in proxy else "not an http(s) URL"
        conv.issue(mid, f"proxy={proxy}", f"{why}: skipped")
        return None
    endpoint: dict[str, Any] = {"url": proxy}
    if int(cfg.get("concurrencyLimit") or 0) > 0:
        endpoint["max_concurrency"] = int(cfg["concurrencyLimit"])
    backend: dict[str, Any] = {"kind": "remote", "endpoints": [endpoint]}
    if cfg.get("useModelName"):
        backend["upstream_model"] = str(cfg["useModelName"])
    program = Path(argv[0]).name
    container = " (or declare it as kind: container, which the gateway starts)" if program in _DOCKER else ""
    why = f"`{program}` is not llama-server: a remote model, which the gateway will not launch"
    conv.issue(mid, "cmd", f"{why}; start it yourself so that it answers at {proxy}{container}", "warning")
    return backend


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
_SECRET_FLAGS = {"--api-key", "--hf-token", "-hft"}
_PATH_FLAGS = {"--mmproj", "-mm", "-md", "--model-draft", "--lora", "--control-vector", "--grammar-file"}
# Flags that change what a replica holds, which the memory estimate (gateway/estimate.py) does not model.
_UNCOUNTED = {"-ctk", "--cache-type-k", "-ctv", "--cache-type-v", "--mmproj", "-mm", "-md", "--model-draft",
              "-ub", "--ubatch-size", "-ot", "--override-tensor", "-nkvo", "--no-kv-offload", "-dev",
              "--device", "-sm", "--split-mode", "-ts", "--tensor-split", "-mg", "--main-gpu", "--lora",
              "-cmoe", "--cpu-moe"}
_ON = {"on", "true", "1", "enabled"}
_OFF = {"off", "false", "0", "disabled"}
# fmt: on


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


def _llama_server(mid: str, argv: list[str], conv: Conversion) -> dict[str, Any] | None:
    base = conv.source.parent
    backend: dict[str, Any] = {"kind": "llama_server"}
    extra: list[str] = []
    hf: str | None = None
    ctx_zero: str | None = None
    for flag, values, tokens in _flags(argv[1:]):
        value = values[0] if len(values) == 1 else None
        shown = " ".join(tokens)
        if flag in _ONE_VALUE:
            if value is None:
                conv.issue(mid, shown, "expected one value")
            elif flag in _INT_FLAGS:
                key = _INT_FLAGS[flag]
                if key == "n_gpu_layers" and value in ("all", "auto"):
                    backend[key] = -1
                    if value == "auto":
                        conv.issue(
                            mid, shown, "the gateway has no 'auto': every layer offloaded (-1)", "warning"
                        )
                elif not re.match(r"^-?\d+$", value):
                    conv.issue(mid, shown, "not a number")
                elif key == "n_ctx" and int(value) == 0:
                    ctx_zero = shown  # the training context, once the model is known
                elif key in ("parallel", "threads", "threads_batch", "threads_http") and int(value) <= 0:
                    conv.issue(
                        mid, shown, "llama-server picks it itself: the gateway's default applies", "note"
                    )
                else:
                    backend[key] = int(value)
            elif flag in ("-m", "--model"):
                backend["model"] = str(_local_path(value, base))
            elif flag == "--chat-template":
                backend["chat_template"] = value
            elif flag == "--chat-template-file":
                backend["chat_template_file"] = str(_local_path(value, base))
            elif flag == "--rpc":
                backend["rpc"] = [w.strip() for w in value.split(",") if w.strip()]
            elif value in ("mean", "cls", "last"):
                backend["pooling"] = value
            else:
                conv.issue(mid, shown, "the gateway pools by mean, cls or last")
            continue
        if flag in ("-fa", "--flash-attn"):
            if value is None or value.lower() in _ON:
                backend["flash_attn"] = True
            elif value.lower() in _OFF:
                backend["flash_attn"] = False
            else:
                conv.issue(
                    mid,
                    shown,
                    "the gateway passes -fa on or off: off (set flash_attn: true to use it)",
                    "warning",
                )
        elif flag in ("--embedding", "--embeddings"):
            backend["embeddings"] = True
        elif flag in ("-cb", "--cont-batching", "-nocb", "--no-cont-batching"):
            backend["cont_batching"] = "no" not in flag
        elif flag == "--metrics":
            pass  # the gateway always passes it
        elif flag in _HF_FLAGS:
            hf = shown  # reported below, with what became of the model
        elif flag in _MANAGED:
            conv.issue(
                mid,
                flag if flag in _SECRET_FLAGS else shown,
                _MANAGED[flag],
                "note" if flag in ("--host", "--port") else "not carried",
            )
        else:
            if flag in _PATH_FLAGS and value is not None:
                tokens = [flag, str(_local_path(value, base))]
            extra += tokens
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
    if "model" not in backend:
        conv.issue(
            mid, hf or "cmd", f"{_HF}: skipped" if hf else "no model file (-m) in the command: skipped"
        )
        return None
    if hf:
        conv.issue(mid, hf, "-m names the local file, which the gateway loads")
    if ctx_zero is not None and (ctx := _ctx_from_model(conv, mid, ctx_zero, Path(backend["model"]))):
        backend["n_ctx"] = ctx
    if "/" in argv[0] or "\\" in argv[0]:
        binary = _local_path(argv[0], base)
        if binary.is_file():
            backend["binary"] = str(binary)
        else:
            conv.issue(
                mid,
                argv[0],
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
    if "n_ctx" not in backend and ctx_zero is None:
        conv.issue(
            mid,
            "-c (absent)",
            "the gateway passes -c 4096 (n_ctx's default); llama-server's own default depends on its version",
            "note",
        )
    if extra:
        backend["extra_args"] = extra
    return backend


# -- writing -------------------------------------------------------------------------------------------------


@dataclass
class WriteResult:
    written: dict[Path, Planned] = field(default_factory=dict)
    existing: list[Path] = field(default_factory=list)  # refused without force: then nothing is written
    issues: list[Issue] = field(default_factory=list)


def render(planned: Planned) -> str:
    head = "".join(f"# {line}\n" for line in planned.comments)
    return head + yaml.safe_dump(
        planned.doc, sort_keys=False, allow_unicode=True, width=110, default_flow_style=None
    )


def _file_missing(reason: str) -> bool:
    return "file not found" in reason


def write(conv: Conversion, out: Path, *, force: bool = False) -> WriteResult:
    result = WriteResult()
    targets: dict[str, Planned] = {}
    for planned in conv.models:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "-", planned.name)
        filename, n = f"{stem}.yaml", 2
        while filename in targets:
            filename, n = f"{stem}-{n}.yaml", n + 1
        targets[filename] = planned
    existing = [out / f for f in targets if (out / f).exists()]
    if existing and not force:
        result.existing = existing
        return result
    # The gateway's loader judges every manifest before any lands in `out`.
    with TemporaryDirectory() as scratch:
        for filename, planned in targets.items():
            (Path(scratch) / filename).write_text(render(planned))
        staged = load_directory(Path(scratch))
    refused = {p.file.name for p in staged.problems if not _file_missing(p.reason)}
    for p in staged.problems:
        if p.file.name in refused:
            result.issues.append(
                Issue(
                    out / p.file.name,
                    targets[p.file.name].name,
                    p.field,
                    f"the gateway would refuse it ({p.reason.removeprefix('Value error, ')}): not written",
                )
            )
    # Names must not clash with the manifests already in `out` either.
    declared: dict[str, Path] = {}
    for other in sorted([*out.glob("*.yaml"), *out.glob("*.yml")]) if out.is_dir() else []:
        if other.name not in targets:
            for item in load_file(other).models:
                for name in (item.manifest.name, *item.manifest.aliases):
                    declared[name] = other
    for filename, planned in targets.items():
        clash = next((n for n in (planned.name, *planned.doc.get("aliases", [])) if n in declared), None)
        if clash is not None and filename not in refused:
            refused.add(filename)
            result.issues.append(
                Issue(
                    out / filename,
                    planned.name,
                    "name",
                    f"'{clash}' is already declared in {declared[clash]}: not written",
                )
            )
    out.mkdir(parents=True, exist_ok=True)
    for filename, planned in targets.items():
        if filename not in refused:
            (out / filename).write_text(render(planned))
            result.written[out / filename] = planned
    # What the gateway will make of the written files.
    for p in load_directory(out).problems:
        planned_for = result.written.get(out / p.file.name)
        if planned_for is not None:
            missing = _file_missing(p.reason)
            reason = p.reason.removeprefix("Value error, ")
            why = f"{reason}: the gateway refuses this manifest until it exists" if missing else reason
            result.issues.append(
                Issue(p.file, planned_for.name, p.field, why, "warning" if missing else "not carried")
            )
    return result


def report(conv: Conversion, result: WriteResult, out: Path) -> str:
    lines = [
        f"{conv.source} ({conv.format}): {len(result.written)} of {len(conv.models)} manifests written "
        f"to {out}"
    ]
    for path, planned in result.written.items():
        aliases = ", ".join(planned.doc.get("aliases", [])) or "-"
        lines.append(f"  {path}  {planned.name}  {planned.doc['backend']['kind']}  aliases: {aliases}")
    issues = conv.issues + result.issues
    for kind, title in (("not carried", "Not carried over"), ("warning", "Warnings"), ("note", "Notes")):
        chosen = [i for i in issues if i.kind == kind]
        if not chosen:
            continue
        lines.append(f"{title} ({len(chosen)}): file, model, setting, why")
        cells = [[str(i.file), i.model or "-", i.setting or "-"] for i in chosen]
        widths = [max(len(row[c]) for row in cells) for c in range(3)]
        for row, i in zip(cells, chosen, strict=True):
            lines.append(
                "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + "  " + i.why
            )
    return "\n".join(lines)
