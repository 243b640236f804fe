"""The operator commands of ``llm-gateway``, run against a gateway that is already serving: ``ps``, ``load``,
``unload``, ``pin``, ``unpin``, ``logs``, ``plan``, ``reload``. They talk to its admin API
(``gateway.cli.admin_client``: where the gateway is, the key) and print plain aligned tables in human units.

Each command prints its result on stdout and exits 0; when the gateway cannot be reached or refuses, it prints
one line on stderr (``cannot reach the gateway at URL: ...``, or the gateway's own error message with its
status) and exits 1. ``plan`` exits 1 when the model would not fit, ``reload`` when a manifest was refused.
"""

from __future__ import annotations

import argparse
import functools
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from gateway.cli.admin_client import AdminClient, AdminError

POLL = 0.5  # seconds between looks at a model's state while its load runs
ACTIVE = ("loading", "ready", "draining")  # what `ps` lists without --all, as `ollama ps` lists loaded ones
IN_PROCESS = "llama_cpp"  # the kind with no process of its own, hence no logs

KEY_NOTE = "The admin key comes from GATEWAY_ADMIN_KEY (else GATEWAY_API_KEY)."

Command = Callable[[argparse.Namespace], int]


# -- human units and tables ------------------------------------------------------------------------------
def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            break
        value /= 1024
    if unit == "B":
        return f"{n} B"
    return f"{value:.1f} {unit}" if abs(value) < 10 else f"{value:.0f} {unit}"


def human_ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return "just now"
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(headers)]
    lines = [headers, *rows]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def _where(model: dict[str, Any]) -> str:
    return ",".join(sorted(model.get("memory_by_device") or {})) or "-"


def _summary(model: dict[str, Any]) -> str:
    """``a: ready, 100 MiB on host, loaded in 1.2 s``."""
    text = f"{model['name']}: {model['state']}"
    if model["state"] != "unloaded":
        text += f", {human_bytes(model['memory_bytes'])} on {_where(model)}"
    if model["state"] == "ready" and model.get("load_seconds") is not None:
        text += f", loaded in {model['load_seconds']:.1f} s"
    return text


# -- ps --------------------------------------------------------------------------------------------------
PS_HEADERS = (
    "NAME", "STATE", "MEMORY", "BUDGET FROM", "DEVICES", "REPLICAS", "REQUESTS", "LAST USED", "PINNED"
)  # fmt: skip


def _budget_from(m: dict[str, Any]) -> str:
    """Which figure the budget uses, with the other one: ``learned (estimate 147 MiB)``."""
    b = m.get("budget")
    if not b:
        return "-"
    if b["uses"] == "learned":
        return f"learned (estimate {human_bytes(b['estimate_bytes'])})"
    if b.get("learned_bytes") is not None:
        return f"{b['uses']} (learned {human_bytes(b['learned_bytes'])})"
    return str(b["uses"])


def _ps_row(m: dict[str, Any]) -> list[str]:
    memory = human_bytes(m["memory_bytes"])
    if m.get("measured_bytes") is not None:
        memory += f" ({human_bytes(m['measured_bytes'])} measured)"
    replicas = m.get("replicas") or []
    healthy = sum(1 for r in replicas if r.get("healthy"))
    requests = str(m["in_flight"]) + (f" +{m['queued']} queued" if m.get("queued") else "")
    note = m.get("never_fits_reason") or m.get("last_error") or ""
    return [
        m["name"],
        m["state"],
        memory,
        _budget_from(m),
        _where(m),
        f"{healthy}/{len(replicas)}" if replicas else "-",
        requests,
        human_ago(m.get("idle_seconds")),
        "yes" if m["pinned"] else "no",
        " ".join(str(note).split()),
    ]


def cmd_ps(args: argparse.Namespace, client: AdminClient, out: TextIO) -> int:
    data = client.models()
    shown = [m for m in data["models"] if args.all or m["state"] in ACTIVE]
    rows = [_ps_row(m) for m in shown]
    headers: Sequence[str] = PS_HEADERS
    if any(row[-1] for row in rows):
        headers = (*PS_HEADERS, "NOTE")
    else:
        rows = [row[:-1] for row in rows]
    print(table(headers, rows), file=out)
    devices = [
        [d["device"], human_bytes(d["used_bytes"]), human_bytes(d["budget_bytes"])] for d in data["devices"]
    ]
    print(file=out)
    print(table(("DEVICE", "USED", "BUDGET"), devices), file=out)
    for p in data.get("manifest_problems") or []:
        print(f"refused manifest: {_problem(p)}", file=out)
    _print_members(client.cluster(), out)
    return 0


def _print_members(fleet: dict[str, Any], out: TextIO) -> None:
    """Cluster mode: the gateways of the fleet (nothing for a gateway alone)."""
    if not fleet.get("cluster"):
        return
    rows = [
        [
            str(m.get("id")),
            "leader" if m.get("id") == fleet.get("leader") else "follower",
            str(m.get("url")),
            str(m.get("manifests")),
        ]
        for m in fleet.get("members", [])
    ]
    print(file=out)
    print(f"fleet '{fleet['cluster']}' (store {'up' if fleet['store']['connected'] else 'DOWN'}):", file=out)
    print(table(("GATEWAY", "ROLE", "URL", "MANIFESTS"), rows), file=out)
    if not fleet.get("manifests_agree", True):
        print("WARNING: the gateways serve different manifests", file=out)


def _problem(p: dict[str, Any]) -> str:
    return ": ".join(str(part) for part in (p["file"], p.get("field"), p["reason"]) if part)


# -- load and pin, with progress -------------------------------------------------------------------------
class Progress:
    """What a slow call shows while it runs: on a terminal one line rewritten in place (state, seconds, the
    load's phase and what is left of it by the model's last load time); elsewhere (a pipe, a log file) one
    line per change of state or phase."""

    def __init__(self, name: str, out: TextIO) -> None:
        self.name = name
        self.out = out
        self.tty = out.isatty()
        self.last: str | None = None

    def show(self, state: str, elapsed: float, phase: str | None = None, eta: float | None = None) -> None:
        """``phase``: what a load is doing (``load_phase`` in /admin/models), when it says; ``eta``: the
        seconds left by the model's last load time (``load_eta_seconds``), when it has loaded before."""
        if state == "unloaded":  # not begun yet, or failed: the call's own answer says which
            return
        left = None
        if eta is not None:
            left = f"about {eta:.0f}s left" if eta >= 0.5 else "past its last load's time"
        parts = [part for part in (phase, left) if part]
        said = f" ({', '.join(parts)})" if parts else ""
        if self.tty:
            self.out.write(f"\r{self.name}: {state} {elapsed:.1f}s{said}\x1b[K")
            self.out.flush()
        elif f"{state} {phase}" != self.last:
            print(f"{self.name}: {state}{said}", file=self.out, flush=True)
        self.last = f"{state} {phase}"

    def end(self) -> None:
        if self.tty and self.last is not None:
            self.out.write("\r\x1b[K")
            self.out.flush()


def with_progress(
    client: AdminClient, name: str, call: Callable[[str], dict[str, Any]], out: TextIO
) -> dict[str, Any]:
    """``call(name)`` on a thread; meanwhile the state every ``POLL`` seconds, shown by ``Progress``."""
    result: list[dict[str, Any]] = []
    failed: list[Exception] = []
    done = threading.Event()

    def run() -> None:
        try:
            result.append(call(name))
        except Exception as exc:  # handed to the main thread, which raises it
            failed.append(exc)
        finally:
            done.set()

    # a daemon: after Ctrl-C the command exits without waiting for the gateway's answer
    threading.Thread(target=run, name=f"admin:{name}", daemon=True).start()
    progress = Progress(name, out)
    start = time.monotonic()
    try:
        while not done.wait(POLL):
            try:
                model = client.model(name)
            except AdminError:
                continue  # a missed look changes nothing: the call's own answer or failure ends the wait
            elapsed = time.monotonic() - start
            progress.show(model["state"], elapsed, model.get("load_phase"), model.get("load_eta_seconds"))
    finally:
        progress.end()
    if failed:
        raise failed[0]
    return result[0]


def _slow(
    name: str, call: Callable[[str], dict[str, Any]], client: AdminClient, out: TextIO, suffix: str = ""
) -> int:
    try:
        model = with_progress(client, name, call, out)
    except KeyboardInterrupt:
        print(f"interrupted: the gateway goes on (llm-gateway unload {name} cancels a load)", file=sys.stderr)
        return 130
    print(_summary(model) + suffix, file=out)
    return 0


def cmd_load(args: argparse.Namespace, client: AdminClient, out: TextIO) -> int:
    return _slow(args.name, client.load, client, out)


def cmd_pin(args: argparse.Namespace, client: AdminClient, out: TextIO) -> int:
    return _slow(args.name, client.pin, client, out, ", pinned")


def cmd_unpin(args: argparse.Namespace, client: AdminClient, out: TextIO) -> int:
    model = client.unpin(args.name)
    print(f"{_summary(model)}, not pinned (evictable)", file=out)
    return 0


def cmd_unload(args: argparse.Namespace, client: AdminClient, out: TextIO) -> int:
    model = client.unload(args.name, force=args.force)
    print(_summary(model) + (" (in-flight requests cut)" if args.force else ""), file=out)
    return 0


# -- plan ------------------------------------------------------------------------------------------------
def plan_text(name: str, plan: dict[str, Any]) -> str:
    """``plan``'s answer for a person: fits or not, what it evicts (and drains), what blocks it, and the
    memory of each device after the load (now, when it does not fit) against its budget."""
    if plan["already_loaded"]:
        lines = [f"{name} is already loaded: a load changes nothing."]
    elif plan["fits"]:
        lines = [f"{name} fits."]
        evict = plan["evict"]
        if not evict:
            lines.append("evicts: nothing")
        else:
            drained = [m for m in evict if m in plan["drain"]]
            lines.append("evicts: " + ", ".join(evict))
            if drained:
                lines.append("drains first (requests in flight): " + ", ".join(drained))
        units = [",".join(u["devices"]) or "-" for u in plan["placement"]]
        lines.append("placed on: " + "; ".join(units))
    else:
        lines = [f"{name} does not fit: {plan['reason']}"]
        if plan["blocked_by"]:
            blocked = (f"{b['model']} ({b['reason']})" for b in plan["blocked_by"])
            lines.append("blocked by: " + ", ".join(blocked))
    label = "memory after the load" if plan["fits"] and not plan["already_loaded"] else "memory now"
    rows = [
        [d["device"], human_bytes(d["used_bytes"]), human_bytes(d["budget_bytes"])]
        for d in plan["memory_after"]
    ]
    lines += ["", f"{label}:", table(("DEVICE", "USED", "BUDGET"), rows)]
    return "\n".join(lines)


def cmd_plan(args: argparse.Namespace, client: AdminClient, out: TextIO) -> int:
    plan = client.plan(args.name)
    print(plan_text(plan["model"], plan), file=out)
    return 0 if plan["fits"] else 1


# -- reload ----------------------------------------------------------------------------------------------
def cmd_reload(args: argparse.Namespace, client: AdminClient, out: TextIO) -> int:
    result = client.reload()
    for key in ("added", "removed", "changed"):
        print(f"{key}: {', '.join(result[key]) or '-'}", file=out)
    print(f"unchanged: {result['unchanged']}", file=out)
    problems = result.get("problems") or []
    for p in problems:
        print(f"error: {_problem(p)} (the previous version keeps serving)", file=sys.stderr)
    return 1 if problems else 0


# -- logs ------------------------------------------------------------------------------------------------
def _no_logs(client: AdminClient, name: str) -> str | None:
    """Why there is nothing to show for ``name``, where nothing ever will be: an in-process model."""
    model = client.model(name)
    if model["kind"] == IN_PROCESS:
        return f"{model['name']} runs inside the gateway (llama_cpp): no logs of its own (see the gateway's)"
    return None


def cmd_logs(args: argparse.Namespace, client: AdminClient, out: TextIO) -> int:
    why = _no_logs(client, args.name)
    if why is not None:
        print(why, file=out)
        return 0
    if args.follow:
        try:
            for event in client.follow_logs(args.name):
                print(f"[{event['replica']}] {event['line']}", file=out, flush=True)
        except KeyboardInterrupt:
            return 0  # Ctrl-C is how following ends
        print("the gateway closed the log stream", file=sys.stderr)
        return 1
    replicas = client.logs(args.name)["replicas"]
    if not any(r["log"] for r in replicas):
        print(f"{args.name}: no log lines" + ("" if replicas else " (no replica running)"), file=out)
    for replica in replicas:
        for line in replica["log"]:
            print(f"[{replica['index']}] {line}", file=out)
    return 0


# -- wiring ----------------------------------------------------------------------------------------------
def _run(command: Callable[[argparse.Namespace, AdminClient, TextIO], int]) -> Command:
    """A command with its client, its failures reported as one line on stderr and exit status 1."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args, AdminClient(args.url), sys.stdout)
        except AdminError as exc:
            print(exc, file=sys.stderr)
            return 1

    return run


def add_parsers(sub: Any) -> None:
    """The operator subcommands, on ``llm-gateway``'s subparsers."""

    def add(name: str, help: str, command: Callable[[argparse.Namespace, AdminClient, TextIO], int]) -> Any:
        p = sub.add_parser(name, help=help, description=f"{help[0].upper()}{help[1:]}. {KEY_NOTE}")
        p.add_argument("--url", help="the gateway (GATEWAY_URL, default http://127.0.0.1:8080)")
        p.set_defaults(func=_run(command))
        return p

    ps = add("ps", "models loaded in a running gateway, with memory and devices", cmd_ps)
    ps.add_argument("--all", "-a", action="store_true", help="every model, unloaded ones too")
    add("load", "load a model now, showing its progress", cmd_load).add_argument("name")
    unload = add("unload", "drain and unload a model (cancels a load under way)", cmd_unload)
    unload.add_argument("name")
    unload.add_argument("--force", action="store_true", help="cut in-flight requests instead of draining")
    add("pin", "never evict a model (loads it now)", cmd_pin).add_argument("name")
    add("unpin", "make a pinned model evictable again", cmd_unpin).add_argument("name")
    logs = add("logs", "the last log lines of a model's replicas", cmd_logs)
    logs.add_argument("name")
    logs.add_argument(
        "-f", "--follow", action="store_true", help="print new lines as they come (Ctrl-C ends)"
    )
    add("plan", "would a model fit now, and what would loading it evict", cmd_plan).add_argument("name")
    add("reload", "read the manifests again; exit 1 if one is refused", cmd_reload)
