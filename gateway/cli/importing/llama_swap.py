"""llama-swap's config.yaml to manifests: its macros are expanded as llama-swap expands them, each model's
``cmd`` is split into arguments, and a llama-server command becomes a llama_server manifest
(``llama_server_flags``) while any other command becomes a remote one, which the gateway does not start."""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.cli.importing.llama_server_flags import SECRET_FLAGS, llama_server_backend
from gateway.cli.importing.report import Conversion, Planned
from gateway.cli.importing.source import SourceError
from gateway.cli.importing.values import VALID_NAME, manifest_doc, show, slugify

_DOCKER = {"docker", "podman", "nerdctl"}
_MACRO = re.compile(r"\$\{([A-Za-z0-9_-]+)\}")
_ENV_MACRO = re.compile(r"\$\{env\.([A-Za-z_][A-Za-z0-9_]*)\}")
_TOP = {
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
_CONSUMED = {"models", "macros", "startPort", "globalTTL", "healthCheckTimeout", "groups", "hooks"}
# fmt: off
_MODEL_KEYS = {"cmd", "aliases", "env", "ttl", "macros", "name", "description", "proxy", "useModelName",
               "concurrencyLimit", "checkEndpoint", "cmdStop"}
# fmt: on
_MODEL_WHY = {
    "unlisted": "the gateway lists every model in /v1/models",
    "filters": "the gateway does not rewrite request bodies",
    "metadata": "the gateway's /v1/models carries no metadata",
    "sendLoadingState": "the gateway sends no loading messages: a request waits for the load (or gets a 503)",
    "timeouts": "the gateway's upstream timeouts are not set per model",
}


def plan_llama_swap(raw: dict[str, Any], conv: Conversion, env: Mapping[str, str]) -> None:
    _report_server_settings(raw, conv)
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
        if isinstance(cfg.get("aliases"), str):
            cfg["aliases"] = [cfg["aliases"]]
        fields, aliases = _expand_macros(mid, cfg, global_macros)
        if "${PORT}" in fields["cmd"]:
            fields = {k: v.replace("${PORT}", str(port)) for k, v in fields.items()}
            port += 1
        leftover = _MACRO.search(fields["cmd"])
        if leftover:
            conv.issue(mid, leftover.group(0), "an unknown macro (llama-swap refuses this config): skipped")
            continue
        _plan_model(mid, cfg, fields, aliases, defaults, conv)
    if defaults["health"] is not None and not any(
        p.doc["backend"]["kind"] == "llama_server" for p in conv.models
    ):
        conv.issue(
            "", f"healthCheckTimeout={defaults['health']}", "only llama-server models have a load_timeout"
        )


def _report_server_settings(raw: dict[str, Any], conv: Conversion) -> None:
    for key, value in raw.items():
        if key in _CONSUMED:
            continue
        setting = key if key in ("apiKeys", "peers") else f"{key}={show(value)}"
        conv.issue("", setting, _TOP.get(key, "not a llama-swap setting"))
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


# -- macros --------------------------------------------------------------------------------------------------


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


def _expand_macros(
    mid: str, cfg: dict[str, Any], global_macros: dict[str, Any]
) -> tuple[dict[str, str], list[str]]:
    """The model's fields and aliases with every macro but ${PORT} expanded."""
    macros: dict[str, Any] = {"MODEL_ID": mid, **global_macros}
    macros.update(cfg.get("macros") or {})  # a model's own macro replaces a global one in place
    fields = {k: str(cfg.get(k) or "") for k in ("cmd", "proxy", "checkEndpoint", "name", "description")}
    fields["cmd"] = "\n".join(ln for ln in fields["cmd"].splitlines() if not ln.strip().startswith("#"))
    fields["proxy"] = fields["proxy"] or "http://localhost:${PORT}"
    aliases = [str(a.get("id", "")) if isinstance(a, dict) else str(a) for a in cfg.get("aliases") or []]
    for name, value in reversed(macros.items()):  # last defined first, as llama-swap does
        slug = f"${{{name}}}"
        fields = {k: v.replace(slug, _macro_str(value)) for k, v in fields.items()}
        aliases = [a.replace(slug, _macro_str(value)) for a in aliases]
    return fields, aliases


# -- one model -----------------------------------------------------------------------------------------------


def _plan_model(
    mid: str,
    cfg: dict[str, Any],
    fields: dict[str, str],
    aliases: list[str],
    defaults: dict[str, Any],
    conv: Conversion,
) -> None:
    command = _command(mid, fields["cmd"], conv)
    if command is None:
        return
    envs, argv = command
    server = Path(argv[0]).name.startswith("llama-server")
    backend = (
        llama_server_backend(mid, argv, conv)
        if server
        else _remote_backend(mid, argv, cfg, fields["proxy"], conv)
    )
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
    name = slugify(mid)
    if name != mid:
        conv.issue(mid, "name", f"not a valid model name: '{name}' instead", "warning")
    kept = _aliases(mid, name, cfg, aliases, conv)
    description = " - ".join(v for v in (fields["name"], fields["description"]) if v)
    doc = manifest_doc(name, kept, description, backend)
    ttl = int(cfg.get("ttl", -1))
    setting = f"ttl={ttl}" if ttl != -1 else f"globalTTL={defaults['ttl']}"
    ttl = defaults["ttl"] if ttl == -1 else ttl
    if ttl < 0:
        conv.issue(mid, setting, "must be -1 or more (llama-swap refuses it): no idle unload")
    elif ttl and server:
        doc["idle_ttl"] = _duration(ttl)
    elif ttl:
        conv.issue(mid, setting, "the gateway does not stop a server it did not start")
    _report_model_settings(mid, cfg, fields, server, conv)
    ran = " ".join(shlex.quote(a) for a in _redact_argv([*envs, *argv]))
    conv.models.append(Planned(name, [mid], doc, [f"llama-swap ran: {ran}"]))


def _command(mid: str, cmd: str, conv: Conversion) -> tuple[list[str], list[str]] | None:
    """The environment assignments the command starts with, and the program with its arguments."""
    try:
        argv = shlex.split("\n".join(ln.rstrip().removesuffix("\\") for ln in cmd.splitlines()))
    except ValueError as exc:
        conv.issue(mid, "cmd", f"cannot be split into arguments ({exc}): skipped")
        return None
    envs: list[str] = []
    while argv and _is_env(argv[0]):
        envs += [] if argv[0] == "env" else [argv[0]]
        argv = argv[1:]
    if not argv:
        conv.issue(mid, "cmd", "no command: skipped")
        return None
    return envs, argv


def _aliases(mid: str, name: str, cfg: dict[str, Any], aliases: list[str], conv: Conversion) -> list[str]:
    kept: list[str] = []
    for entry, alias in zip(cfg.get("aliases") or [], aliases, strict=True):
        if not VALID_NAME.match(alias):
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
    return kept


def _report_model_settings(
    mid: str, cfg: dict[str, Any], fields: dict[str, str], server: bool, conv: Conversion
) -> None:
    for key, value in cfg.items():
        if key in _MODEL_WHY:
            conv.issue(mid, f"{key}={show(value)}", _MODEL_WHY[key])
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
        elif key not in _MODEL_KEYS:
            conv.issue(mid, f"{key}={show(value)}", "not a llama-swap model setting")


def _duration(seconds: int) -> str:
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _redact(arg: str) -> str:
    """NAME=value with a name that says key, token, secret or password, value hidden."""
    name, eq, _ = arg.partition("=")
    return f"{name}{eq}***" if eq and re.search(r"key|token|secret|passw", name, re.IGNORECASE) else arg


def _redact_argv(args: list[str]) -> list[str]:
    """Keeps secrets out of the report and the manifests' comments."""
    out: list[str] = []
    for arg in args:
        flag, eq, _ = arg.partition("=")
        if out and out[-1] in SECRET_FLAGS:
            out.append("***")
        elif flag in SECRET_FLAGS and eq:
            out.append(f"{flag}=***")
        else:
            out.append(_redact(arg))
    return out


def _is_env(arg: str) -> bool:
    return arg == "env" or re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", arg) is not None


def _remote_backend(
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
