"""The operator commands (``llm-gateway ps``, ``load``, ``plan``, ...) run as an operator runs them: the
console script's module in a subprocess, against a real gateway on a real socket, with synthetic models
(in-process llama.cpp, and llama-server for a slow load and for logs)."""

from __future__ import annotations

import json
import os
import pty
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from backends.llama_server.build import built_binary
from gateway.cli.operator import human_ago, human_bytes, table
from tests.conftest import EOS, ROOT, RunningGateway, free_port, llama_manifest, wait_for

MiB = 2**20


def cli(
    url: str, *args: str, env: dict[str, str] | None = None, **kw: Any
) -> subprocess.CompletedProcess[str]:
    """``llm-gateway ARGS`` with GATEWAY_URL set and no other GATEWAY_* variable from this environment."""
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        cwd=ROOT,
        env=cli_env(url, env),
        capture_output=True,
        text=True,
        timeout=120,
        **kw,
    )


def cli_env(url: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return {**env, "GATEWAY_URL": url, **(extra or {})}


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.stdout, result.stderr)
    return result.stdout


def ps_rows(out: str) -> dict[str, dict[str, str]]:
    """``ps``'s model table, cut at its header's column starts: {name: {column: cell}}."""
    header, *lines = out.split("\n\n")[0].splitlines()
    names = [n for n in header.split("  ") if n.strip()]
    starts = [header.index(n.strip()) for n in names]
    ends = [*starts[1:], None]
    rows = [
        {n.strip(): line[s:e].strip() for n, s, e in zip(names, starts, ends, strict=True)} for line in lines
    ]
    return {row["NAME"]: row for row in rows}


def states(gw: RunningGateway) -> dict[str, str]:
    return {m["name"]: m["state"] for m in gw.admin()["models"]}


@pytest.fixture
def two(serve: Callable[..., RunningGateway], model_files: dict[str, Path]) -> RunningGateway:
    """Two models of 100 MiB and room for one: loading one evicts the other."""
    return serve(
        [llama_manifest(n, model_files[n], memory=f"{100 * MiB}") for n in "ab"], memory_budget=150 * MiB
    )


def test_human_units_and_tables() -> None:
    assert [human_bytes(n) for n in (512, 233 * MiB, int(1.5 * 2**30), None)] == [
        "512 B",
        "233 MiB",
        "1.5 GiB",
        "-",
    ]
    assert [human_ago(s) for s in (0.2, 5, 150, 7300, None)] == [
        "just now",
        "5s ago",
        "2m ago",
        "2h ago",
        "-",
    ]
    assert table(("A", "LONGER"), [["xyz", "1"]]) == "A    LONGER\nxyz  1"


def test_ps_lists_loaded_models_and_all_lists_every_model(two: RunningGateway) -> None:
    assert ps_rows(ok(cli(two.base_url, "ps"))) == {}  # nothing loaded yet
    every = ps_rows(ok(cli(two.base_url, "ps", "--all")))
    assert {n: r["STATE"] for n, r in every.items()} == {"a": "unloaded", "b": "unloaded"}
    assert every["a"]["MEMORY"] == "100 MiB"
    assert every["a"]["BUDGET FROM"] == "manifest"  # its manifest's memory: never second-guessed

    loaded = ok(cli(two.base_url, "load", "a"))
    assert "a: ready, 100 MiB on host" in loaded
    assert states(two)["a"] == "ready"

    out = ok(cli(two.base_url, "ps"))
    rows = ps_rows(out)
    assert list(rows) == ["a"]
    assert rows["a"]["STATE"] == "ready" and rows["a"]["DEVICES"] == "host"
    assert rows["a"]["MEMORY"].startswith("100 MiB") and rows["a"]["PINNED"] == "no"
    assert rows["a"]["BUDGET FROM"].startswith("manifest (learned ")  # measured at its load, shown beside
    devices = out.split("\n\n")[1].splitlines()
    assert devices[0].split() == ["DEVICE", "USED", "BUDGET"]
    assert devices[1].split() == ["host", "100", "MiB", "150", "MiB"]


def test_plan_says_what_a_load_evicts_and_the_load_does_just_that(two: RunningGateway) -> None:
    ok(cli(two.base_url, "load", "a"))
    plan = ok(cli(two.base_url, "plan", "b"))
    assert plan.startswith("b fits.") and "evicts: a\n" in plan
    assert "memory after the load:" in plan and "host    100 MiB  150 MiB" in plan
    assert states(two) == {"a": "ready", "b": "unloaded"}  # a plan changes nothing

    ok(cli(two.base_url, "load", "b"))
    assert states(two) == {"a": "unloaded", "b": "ready"}
    assert "already loaded" in ok(cli(two.base_url, "plan", "b"))


def test_pin_shows_in_ps_blocks_the_plan_and_unpin_undoes_it(two: RunningGateway) -> None:
    pinned = ok(cli(two.base_url, "pin", "a"))
    assert "a: ready" in pinned and pinned.rstrip().endswith("pinned")
    assert ps_rows(ok(cli(two.base_url, "ps")))["a"]["PINNED"] == "yes"

    blocked = cli(two.base_url, "plan", "b")
    assert blocked.returncode == 1
    assert blocked.stdout.startswith("b does not fit") and "blocked by: a (pinned)" in blocked.stdout
    assert "memory now:" in blocked.stdout

    assert "not pinned" in ok(cli(two.base_url, "unpin", "a"))
    assert ps_rows(ok(cli(two.base_url, "ps")))["a"]["PINNED"] == "no"
    assert "evicts: a" in ok(cli(two.base_url, "plan", "b"))


def test_unload_drops_the_model_from_ps(two: RunningGateway) -> None:
    ok(cli(two.base_url, "load", "a"))
    assert "a: unloaded" in ok(cli(two.base_url, "unload", "a"))
    assert states(two)["a"] == "unloaded"
    assert ps_rows(ok(cli(two.base_url, "ps"))) == {}


def test_unload_force_cuts_a_running_stream(
    serve: Callable[..., RunningGateway], model_files: dict[str, Path]
) -> None:
    # a drain grace far beyond the subprocess's timeout: only --force can unload while the stream runs
    gw = serve([llama_manifest("a", model_files["a"], backend={"n_ctx": 65536})], drain_grace="600s")
    body = {
        "model": "a",
        "messages": [{"role": "user", "content": "x"}],
        "stream": True,
        "max_tokens": 100_000,
        "logit_bias": {EOS: -100},
    }
    with httpx.stream("POST", f"{gw.base_url}/v1/chat/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        next(lines)
        forced = ok(cli(gw.base_url, "unload", "a", "--force"))
        events = [line for line in lines if line.startswith("data: ")]
    assert "a: unloaded (in-flight requests cut)" in forced
    last = json.loads(events[-1].removeprefix("data: "))
    assert "unloaded" in last["error"]["message"]


def test_errors_of_the_gateway_are_one_line_with_its_status(two: RunningGateway) -> None:
    missing = cli(two.base_url, "load", "nosuch")
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr.count("\n") == 1
    assert missing.stderr.startswith("the gateway refused (404): The model 'nosuch' does not exist")


def test_logs_of_an_in_process_model_say_there_are_none(two: RunningGateway) -> None:
    out = ok(cli(two.base_url, "logs", "a"))
    assert "a runs inside the gateway" in out and "no logs" in out
    assert "no logs" in ok(cli(two.base_url, "logs", "a", "-f"))  # nothing to follow: it ends at once


def test_reload_prints_what_it_added_and_the_refused_file(
    two: RunningGateway, model_files: dict[str, Path]
) -> None:
    directory = two.settings.manifests
    (directory / "c.yaml").write_text(yaml.safe_dump(llama_manifest("c", model_files["c"])))
    out = ok(cli(two.base_url, "reload"))
    assert "added: c\n" in out and "removed: -\n" in out and "unchanged: 2\n" in out
    assert "c" in states(two)

    broken = llama_manifest("d", model_files["d"], backend={"n_ctxx": 512})
    (directory / "broken.yaml").write_text(yaml.safe_dump(broken))
    refused = cli(two.base_url, "reload")
    assert refused.returncode == 1 and "added: -\n" in refused.stdout and "unchanged: 3" in refused.stdout
    assert "broken.yaml" in refused.stderr and "n_ctxx" in refused.stderr


def test_unreachable_gateway_is_one_line_and_exit_1(two: RunningGateway) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    for args in (["ps"], ["load", "a"], ["logs", "a", "-f"]):
        result = cli(url, *args)
        assert result.returncode == 1 and result.stdout == ""
        assert result.stderr.startswith(f"cannot reach the gateway at {url}: ")
        assert result.stderr.count("\n") == 1
    assert ok(cli(url, "ps", "--url", two.base_url)).startswith("NAME")  # the flag wins over GATEWAY_URL


def test_admin_key_from_the_environment(
    serve: Callable[..., RunningGateway], model_files: dict[str, Path]
) -> None:
    gw = serve([llama_manifest("a", model_files["a"])], admin_key="adm", api_keys={"alice": "sk-a"})
    none = cli(gw.base_url, "ps")
    assert none.returncode == 1 and none.stderr.count("\n") == 1
    assert none.stderr.startswith("the gateway refused (401)") and "GATEWAY_ADMIN_KEY" in none.stderr

    api_key = cli(gw.base_url, "ps", env={"GATEWAY_ADMIN_KEY": "sk-a"})
    assert api_key.returncode == 1 and api_key.stderr.startswith("the gateway refused (403)")
    assert "sk-a" not in api_key.stderr + api_key.stdout

    wrong = cli(gw.base_url, "ps", env={"GATEWAY_ADMIN_KEY": "wrong-key"})
    assert wrong.returncode == 1 and "(401)" in wrong.stderr and "wrong-key" not in wrong.stderr

    assert "NAME" in ok(cli(gw.base_url, "ps", env={"GATEWAY_ADMIN_KEY": "adm"}))
    assert "NAME" in ok(cli(gw.base_url, "ps", env={"GATEWAY_API_KEY": "adm"}))  # the fallback


# -- a slow load and logs: llama-server ------------------------------------------------------------------
@pytest.fixture
def slow_server(
    serve: Callable[..., RunningGateway], model_files: dict[str, Path], tmp_path: Path
) -> RunningGateway:
    """A llama-server model whose process takes 1.5 s before it starts loading, as a big model would."""
    binary = built_binary("llama-server")
    assert binary is not None, "llama-server not built: run `llm-gateway build-llama-server`"
    wrapper = tmp_path / "slow-llama-server"
    wrapper.write_text(f'#!/bin/sh\nsleep 1.5\nexec {binary} "$@"\n')
    wrapper.chmod(0o755)
    backend = {"kind": "llama_server", "model": str(model_files["b"]), "n_ctx": 512, "threads": 1}
    return serve([{"name": "srv", "backend": {**backend, "binary": str(wrapper)}}])


def test_load_shows_progress_line_by_line_and_logs_follow(slow_server: RunningGateway) -> None:
    out = ok(cli(slow_server.base_url, "load", "srv"))
    lines = out.splitlines()
    # not a terminal: one line per state and phase of the load (the process sleeps before it listens)
    # A poll that comes before the replica says what it does sees the scheduler's generic "starting".
    if lines[0] == "srv: loading (starting)":
        lines = lines[1:]
    assert lines[0] == "srv: loading (starting process)"
    assert set(lines[1:-1]) <= {"srv: loading (loading weights)", "srv: ready"}, lines
    assert lines[-1].startswith("srv: ready, ") and "loaded in" in lines[-1]

    logs = ok(cli(slow_server.base_url, "logs", "srv"))
    assert logs.startswith("[0] ") and len(logs.splitlines()) > 1

    with subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "logs", "srv", "-f"],
        cwd=ROOT,
        env=cli_env(slow_server.base_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as follow:
        got: queue.Queue[str] = queue.Queue()

        def read() -> None:
            for line in follow.stdout or ():
                got.put(line)

        threading.Thread(target=read, daemon=True).start()
        try:
            assert got.get(timeout=60).startswith("[0] ")
            follow.send_signal(signal.SIGINT)  # Ctrl-C
            assert follow.wait(timeout=30) == 0
        finally:
            if follow.poll() is None:
                follow.kill()


def test_admin_models_shows_the_phase_of_a_load(slow_server: RunningGateway) -> None:
    """``load_phase`` in /admin/models while the model loads, as its kind says; none once it is ready."""
    loading = threading.Thread(
        target=lambda: httpx.post(f"{slow_server.base_url}/admin/models/srv/load", timeout=120).close()
    )
    loading.start()
    try:
        seen: list[str] = []

        def phase() -> bool:
            now = slow_server.model_state("srv")["load_phase"]
            if now and (not seen or seen[-1] != now):
                seen.append(now)
            return now == "starting process"  # the wrapper sleeps 1.5 s before llama-server listens

        wait_for(phase, "the replica's own phase of the load")
        # Before the replica says what it does, the scheduler's generic phase only.
        assert seen[:-1] in ([], ["starting"]), seen
    finally:
        loading.join(120)
    model = slow_server.model_state("srv")
    assert model["state"] == "ready" and model["load_phase"] is None


def test_load_on_a_terminal_rewrites_one_line(slow_server: RunningGateway) -> None:
    main, child = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "load", "srv"],
        cwd=ROOT,
        env=cli_env(slow_server.base_url),
        stdout=child,
        stderr=subprocess.DEVNULL,
    )
    os.close(child)
    seen = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # EIO: the terminal's last writer has gone
            break
        if not chunk:
            break
        seen += chunk
    os.close(main)
    assert proc.wait(timeout=60) == 0
    wait_for(lambda: states(slow_server)["srv"] == "ready", "the load")
    updates = [float(t) for t in re.findall(rb"\rsrv: loading (\d+\.\d)s \(starting process\)\x1b\[K", seen)]
    assert len(updates) >= 2 and updates == sorted(updates) and updates[0] >= 0.5  # every 0.5 s, in place
    final = seen.rsplit(b"\r\x1b[K", 1)[1]  # the progress line is cleared, then the result takes its place
    assert final.startswith(b"srv: ready, ")


def test_a_second_load_shows_what_is_left_by_the_last_load_time(slow_server: RunningGateway) -> None:
    """Once a model has loaded, its next load's progress says about how long is left (``load_eta_seconds``
    in /admin/models, from its last load time); its first load has nothing to go by."""
    first = ok(cli(slow_server.base_url, "load", "srv")).splitlines()
    assert "left" not in first[0], first
    ok(cli(slow_server.base_url, "unload", "srv"))
    again = ok(cli(slow_server.base_url, "load", "srv")).splitlines()
    assert re.fullmatch(r"srv: loading \(starting process, about \d+s left\)", again[0]), again
    assert again[-1].startswith("srv: ready, ")
