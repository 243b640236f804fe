"""The web console (``/ui``) in a real browser: Debian's chromium driven by Playwright, against a real gateway
on a real socket with real models (SmolLM2 in process, synthetic llama models, a llama-server process).

One browser and one gateway for the module; each test gets a fresh browser context (a new tab session, so
a new login). The tests take a screenshot of each page: into docs/console/ (the README shows models.png) with
``CONSOLE_SCREENSHOTS=docs/console``, else under the temporary directory, so that a test run leaves the
working tree clean. A failing test saves one of the page as it was, under the pytest temp directory (or
$CONSOLE_FAILURES), and prints where.
Each test sets the models it needs through the admin API first, so that none depends on another's order.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from backends.llama_server.build import built_binary
from gateway.config.settings import Settings
from tests.conftest import FAILED, SMOLLM2, RunningGateway, free_port, llama_manifest, write_manifests
from tests.test_llama_server import server_manifest

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path(os.environ.get("CONSOLE_SCREENSHOTS") or Path(tempfile.gettempdir()) / "llm-gateway-console")
ADMIN = "console-admin-key"
ALICE = "sk-console-alice"
MiB = 2**20
LOAD = 120_000  # ms: a generous bound on a model's load on a busy machine; not what is tested
expect.set_options(timeout=30_000)


@pytest.fixture(scope="module")
def gateway(
    model_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    """smollm2 (226 MiB) and srv (100 MiB) fit beside a or b (600 MiB each) in 1100 MiB; a and b never fit
    together, so loading one evicts the other."""
    smollm2 = {
        "name": "smollm2",
        "backend": {"kind": "llama_cpp", "model": str(SMOLLM2), "n_ctx": 1024, "n_threads": 2},
    }
    manifests = [
        smollm2,
        llama_manifest("a", model_files["a"], memory=f"{600 * MiB}"),
        llama_manifest("b", model_files["b"], memory=f"{600 * MiB}", idle_ttl="10m"),
    ]
    if built_binary("llama-server") is not None:  # the logs test says so when it is missing
        manifests.append({**server_manifest("srv", model_files["c"], n_ctx=512), "memory": f"{100 * MiB}"})
    directory = write_manifests(tmp_path_factory.mktemp("console") / "manifests", manifests)
    settings = Settings(
        manifests=directory,
        port=free_port(),
        memory_budget=1100 * MiB,
        admin_key=ADMIN,
        api_keys={"alice": ALICE},
    )
    with RunningGateway(settings) as gw:
        yield gw


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert CHROMIUM.exists(), "chromium is not installed: tests/services/install.sh installs it"
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(
    browser: Browser, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Page]:
    """A fresh tab session. Script errors and Content-Security-Policy violations fail the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, color_scheme="light")
    tab = context.new_page()
    problems: list[str] = []
    tab.on("pageerror", lambda e: problems.append(f"script error: {e}"))
    tab.on(
        "console",
        lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None,
    )
    try:
        yield tab
        assert not problems, problems
    finally:
        if request.node.stash.get(FAILED, False):
            folder = Path(
                os.environ.get("CONSOLE_FAILURES") or tmp_path_factory.getbasetemp() / "console-failures"
            )
            folder.mkdir(parents=True, exist_ok=True)
            shot = folder / f"{request.node.name}.png"
            tab.screenshot(path=str(shot), full_page=True)
            print(f"the page at the failure: {shot}")
        context.close()


def admin(gw: RunningGateway, method: str, path: str) -> dict[str, Any]:
    r = httpx.request(
        method, f"{gw.base_url}{path}", headers={"authorization": f"Bearer {ADMIN}"}, timeout=120
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def model(gw: RunningGateway, name: str) -> dict[str, Any]:
    return admin(gw, "GET", f"/admin/models/{name}")


def only_loaded(gw: RunningGateway, *names: str) -> None:
    """Unload every other model, load these (the admin API, not the console: the test's starting point)."""
    for m in admin(gw, "GET", "/admin/models")["models"]:
        if m["pinned"]:
            admin(gw, "POST", f"/admin/models/{m['name']}/unpin")
        if m["name"] not in names and m["state"] != "unloaded":
            admin(gw, "POST", f"/admin/models/{m['name']}/unload?force=true")
    for name in names:
        admin(gw, "POST", f"/admin/models/{name}/load")


def log_in(tab: Page, gw: RunningGateway, page: str = "") -> None:
    tab.goto(f"{gw.base_url}/ui{'#/' + page if page else ''}")
    tab.fill("#login-key", ADMIN)
    tab.press("#login-key", "Enter")
    expect(tab.locator("#nav")).to_be_visible()


def shoot(tab: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    tab.evaluate("document.getElementById('status').textContent = ''")
    tab.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def row(tab: Page, model: str) -> Any:
    return tab.locator(f"#models-rows tr[data-row='{model}']")


def test_log_in_with_the_admin_key_a_wrong_one_is_refused_clearly(
    page: Page, gateway: RunningGateway
) -> None:
    page.goto(f"{gateway.base_url}/ui")
    expect(page.locator("#login")).to_be_visible()
    expect(page.locator("#nav")).to_be_hidden()
    page.fill("#login-key", "not-the-key")
    page.press("#login-key", "Enter")
    expect(page.locator("#login-error")).to_have_text(
        "The gateway refused this key: it is not the admin key."
    )
    page.fill("#login-key", ALICE)  # a valid key, but for /v1 only
    page.press("#login-key", "Enter")
    expect(page.locator("#login-error")).to_contain_text("API key for /v1, not the admin key")
    shoot(page, "login")
    page.fill("#login-key", ADMIN)
    page.click("#login-submit")
    expect(page.locator("#page-models")).to_be_visible()
    expect(page.locator("#session")).to_contain_text("signed in: admin key")
    expect(row(page, "smollm2")).to_be_visible()
    # kept for this tab's session only: not in the URL, not in local storage, not in a cookie
    assert ADMIN not in page.url
    assert page.evaluate("sessionStorage.getItem('llm-gateway.admin-key')") == ADMIN
    assert page.evaluate("localStorage.length") == 0 and page.context.cookies() == []
    page.reload()  # the same tab: still signed in
    expect(page.locator("#session")).to_contain_text("signed in: admin key")
    other = page.context.browser.new_context() if page.context.browser else None
    assert other is not None
    try:  # another browser session asks again
        fresh = other.new_page()
        fresh.goto(f"{gateway.base_url}/ui")
        expect(fresh.locator("#login")).to_be_visible()
    finally:
        other.close()
    page.click("#logout")
    expect(page.locator("#login")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0


def test_models_page_loads_pins_unpins_and_unloads(page: Page, gateway: RunningGateway) -> None:
    only_loaded(gateway, "smollm2", *(["srv"] if built_binary("llama-server") else []))  # a fuller picture
    log_in(page, gateway)
    a = row(page, "a")
    expect(a).to_have_attribute("data-state", "unloaded")
    a.get_by_role("button", name="Load a", exact=True).click()
    expect(a).to_have_attribute("data-state", "ready", timeout=LOAD)
    expect(page.locator("#status")).to_contain_text("a is ready")
    a.get_by_role("button", name="Pin a", exact=True).click()
    expect(a.locator("td").nth(4)).to_have_text("pinned")
    assert model(gateway, "a")["pinned"]
    expect(a.locator("td.ttl")).to_have_text("pinned: never")
    a.get_by_role("button", name="Unpin a", exact=True).click()
    expect(a.get_by_role("button", name="Pin a", exact=True)).to_be_visible()
    assert not model(gateway, "a")["pinned"]
    expect(row(page, "b").locator("td.ttl")).to_have_text("10m 00s idle")  # b's idle TTL, not loaded
    shoot(page, "models")
    a.get_by_role("button", name="Unload a", exact=True).click()
    expect(a).to_have_attribute("data-state", "unloaded", timeout=LOAD)
    assert model(gateway, "a")["state"] == "unloaded"
    # a forced unload asks first
    admin(gateway, "POST", "/admin/models/a/load")
    expect(a).to_have_attribute("data-state", "ready")
    a.get_by_role("button", name="Force unload a", exact=True).click()
    expect(page.locator("#confirm")).to_be_visible()
    expect(page.locator("#confirm-title")).to_have_text("Force unload a?")
    page.click("#confirm-ok")
    expect(a).to_have_attribute("data-state", "unloaded", timeout=LOAD)


def test_idle_ttl_counts_down(page: Page, gateway: RunningGateway) -> None:
    only_loaded(gateway, "b")
    log_in(page, gateway)
    ttl = row(page, "b").locator("td.ttl")
    expect(ttl).to_contain_text("unloads in 9m")


def test_devices_plan_names_what_a_load_evicts_and_the_swap_shows(
    page: Page, gateway: RunningGateway
) -> None:
    only_loaded(gateway, "a")
    log_in(page, gateway, "devices")
    host = page.locator("#devices-list [data-device='host']")
    expect(host.locator(".bar [data-model='a']")).to_be_visible()
    page.select_option("#plan-model", "b")
    plan = page.locator("#plan-result .plan[data-model='b']")
    expect(plan.locator(".evict-list")).to_have_text("a")
    expect(plan).to_contain_text("b fits once a is evicted.")
    expect(plan).to_contain_text("host after: 600 MiB of 1.07 GiB")
    shoot(page, "devices")
    page.click("#plan-load")
    dialog = page.locator("#confirm")
    expect(dialog).to_contain_text("Loading b evicts a.")
    page.click("#confirm-ok")
    expect(page.locator("#status")).to_contain_text("b is ready; evicted a.", timeout=LOAD)
    expect(host.locator(".bar [data-model='b']")).to_be_visible()
    expect(host.locator(".bar [data-model='a']")).to_have_count(0)
    expect(plan).to_contain_text("b is loaded already.")
    assert (model(gateway, "a")["state"], model(gateway, "b")["state"]) == ("unloaded", "ready")


def test_a_line_a_model_writes_shows_on_the_logs_page_live(page: Page, gateway: RunningGateway) -> None:
    assert built_binary("llama-server") is not None, (
        "llama-server not built: run `llm-gateway build-llama-server`"
    )
    only_loaded(gateway, "srv")
    log_in(page, gateway, "logs")
    page.evaluate("window.notReloaded = true")
    page.select_option("#logs-model", "srv")
    lines = page.locator("#logs-lines")
    expect(lines).to_contain_text("[0] ")  # the tail first (replica 0's last lines)
    before = lines.inner_text().count("launch_slot_")
    client = gateway.client(api_key=ALICE)  # a request makes llama-server log its slot's work
    client.chat.completions.create(model="srv", messages=[{"role": "user", "content": "x"}], max_tokens=4)
    page.wait_for_function(
        "n => document.getElementById('logs-lines').textContent.split('launch_slot_').length - 1 > n",
        arg=before,
    )
    assert page.evaluate("window.notReloaded") is True  # the same page, followed live
    shoot(page, "logs")


def test_a_request_from_the_openai_sdk_shows_on_the_activity_page(
    page: Page, gateway: RunningGateway
) -> None:
    only_loaded(gateway, "smollm2")
    log_in(page, gateway, "activity")
    client = gateway.client(api_key=ALICE)
    answer = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Say hi."}], max_tokens=8, temperature=0
    )
    assert answer.usage is not None
    newest = page.locator("#activity-rows tr[data-model='smollm2']").first
    expect(newest).to_contain_text("alice")
    expect(newest.locator("td.prompt")).to_have_text(str(answer.usage.prompt_tokens))
    expect(newest.locator("td.completion")).to_have_text(str(answer.usage.completion_tokens))
    rows = page.locator("#activity-rows tr[data-model='smollm2']")
    seen = rows.count()
    for _ in client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Count to ten."}], max_tokens=48, stream=True
    ):
        pass  # a stream, for the tokens/s chart
    expect(rows).to_have_count(seen + 1)
    # the chart of tokens/s, from the gateway's own samples (one each 2 s), shows smollm2 generating
    page.wait_for_function(
        "() => Number(document.querySelector(\"#chart-tps polyline[data-name='smollm2']\")?.dataset.max) > 0"
    )
    shoot(page, "activity")


def test_the_playground_streams_an_answer(page: Page, gateway: RunningGateway) -> None:
    only_loaded(gateway, "smollm2")
    log_in(page, gateway, "playground")
    page.select_option("#chat-model", "smollm2")
    page.fill("#chat-temperature", "0")
    page.fill("#chat-max-tokens", "64")
    page.fill("#chat-input", "Write three sentences about the sea.")
    page.click("#chat-send")
    answer = page.locator("#chat-log .msg.assistant")
    # part of the answer shows while the rest is still coming ("streaming" turns "done" at the stream's end)
    page.wait_for_function(
        "() => { const a = document.querySelector('#chat-log .msg.assistant');"
        " return a.dataset.state === 'streaming' && a.textContent.length > 'smollm2'.length; }"
    )
    expect(answer).to_have_attribute("data-state", "done", timeout=LOAD)
    assert int(answer.get_attribute("data-chunks") or 0) > 1  # token by token, not one piece
    assert len(answer.inner_text().removeprefix("smollm2").strip()) > 10
    expect(page.locator("#chat-stats")).to_contain_text("tokens/s")
    shoot(page, "playground")


def focus_by_tab(tab: Page, selector: str, presses: int = 80) -> None:
    """Press Tab (only the keyboard) until ``selector`` has the focus: it can be reached without a mouse."""
    for _ in range(presses):
        if tab.evaluate("s => document.activeElement && document.activeElement.matches(s)", selector):
            return
        tab.keyboard.press("Tab")
    raise AssertionError(f"{selector} is not reachable with Tab")


def choose_by_keyboard(tab: Page, selector: str, value: str) -> None:
    """With the focus on a <select>, press ArrowDown until ``value`` is chosen."""
    for _ in range(20):
        if tab.eval_on_selector(selector, "s => s.value") == value:
            return
        tab.keyboard.press("ArrowDown")
    raise AssertionError(f"{value} not found in {selector} with the arrow keys")


def test_every_action_by_keyboard_alone(page: Page, gateway: RunningGateway) -> None:
    only_loaded(gateway)
    keys = page.keyboard
    page.goto(f"{gateway.base_url}/ui")
    focus_by_tab(page, "#login-key")
    keys.type(ADMIN)
    keys.press("Enter")
    expect(page.locator("#page-models")).to_be_visible()
    a = row(page, "a")
    expect(a).to_have_attribute("data-state", "unloaded")
    for action, done in (
        ("load:a", "ready"),
        ("pin:a", "ready"),
        ("unpin:a", "ready"),
        ("unload:a", "unloaded"),
    ):
        focus_by_tab(page, f"[data-fid='{action}']")
        keys.press("Enter")
        expect(a).to_have_attribute("data-state", done, timeout=LOAD)
        pinned = action == "pin:a"
        expect(a.get_by_role("button", name="Unpin a" if pinned else "Pin a", exact=True)).to_be_visible()
    admin(gateway, "POST", "/admin/models/a/load")
    expect(a).to_have_attribute("data-state", "ready")
    focus_by_tab(page, "[data-fid='force:a']")
    keys.press("Enter")
    expect(page.locator("#confirm")).to_be_visible()
    focus_by_tab(page, "#confirm-ok", presses=4)  # the dialog keeps the focus inside it
    keys.press("Enter")
    expect(a).to_have_attribute("data-state", "unloaded", timeout=LOAD)
    focus_by_tab(page, "#reload-manifests")
    keys.press("Enter")
    expect(page.locator("#status")).to_contain_text("Manifests reloaded")

    focus_by_tab(page, "#nav a[data-page='devices']")
    keys.press("Enter")
    expect(page.locator("#page-devices")).to_be_visible()
    focus_by_tab(page, "#plan-model")
    choose_by_keyboard(page, "#plan-model", "a")
    expect(page.locator("#plan-result .plan[data-model='a']")).to_contain_text("a fits")
    focus_by_tab(page, "#plan-load")
    keys.press("Enter")
    expect(page.locator("#confirm")).to_be_visible()
    keys.press("Enter")  # the focus starts on the confirmation
    expect(page.locator("#status")).to_contain_text("a is ready", timeout=LOAD)

    focus_by_tab(page, "#nav a[data-page='playground']")
    keys.press("Enter")
    focus_by_tab(page, "#chat-model")
    choose_by_keyboard(page, "#chat-model", "a")
    focus_by_tab(page, "#chat-max-tokens")
    keys.press("Control+a")
    keys.type("4")
    focus_by_tab(page, "#chat-input")
    keys.type("hello")
    keys.press("Control+Enter")
    expect(page.locator("#chat-log .msg.assistant")).to_have_attribute("data-state", "done", timeout=LOAD)

    focus_by_tab(page, "#nav a[data-page='logs']")
    keys.press("Enter")
    focus_by_tab(page, "#logs-model")
    choose_by_keyboard(page, "#logs-model", "a")
    expect(page.locator("#logs-state")).to_contain_text("following a")

    focus_by_tab(page, "#logout")
    keys.press("Enter")
    expect(page.locator("#login")).to_be_visible()


def test_read_only_without_a_key_when_enabled(
    page: Page, model_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    directory = write_manifests(tmp_path_factory.mktemp("read-only"), [llama_manifest("a", model_files["a"])])
    settings = Settings(manifests=directory, port=free_port(), admin_key=ADMIN, console_read_only=True)
    with RunningGateway(settings) as gw:
        page.goto(f"{gw.base_url}/ui")
        expect(row(page, "a")).to_be_visible()  # no login asked to look
        expect(page.locator("#session")).to_contain_text("read-only")
        expect(row(page, "a").get_by_role("button")).to_have_count(0)  # nothing to act with
        expect(page.locator("#reload-manifests")).to_be_hidden()
        page.click("#login-open")
        expect(page.locator("#login-readonly")).to_be_visible()
        page.fill("#login-key", ADMIN)
        page.press("#login-key", "Enter")
        row(page, "a").get_by_role("button", name="Load a", exact=True).click()
        expect(row(page, "a")).to_have_attribute("data-state", "ready", timeout=LOAD)


def test_another_origin_gets_nothing_and_cannot_act(
    page: Page, model_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A gateway with no key at all (its /admin open to whoever reaches it), reached as localhost: another
    origin than 127.0.0.1, so a page there stands for any site the operator's browser has open."""
    directory = write_manifests(tmp_path_factory.mktemp("origins"), [llama_manifest("a", model_files["a"])])
    with RunningGateway(Settings(manifests=directory, port=free_port())) as gw:
        page.goto(
            f"http://localhost:{gw.settings.port}/health"
        )  # a page of that origin without the console's CSP
        target = gw.base_url  # http://127.0.0.1:port
        read = page.evaluate(
            "url => fetch(url + '/admin/models').then(() => 'read', e => 'blocked: ' + e.message)", target
        )
        assert read.startswith("blocked"), read  # no CORS headers: the answer never reaches the script
        post = (
            "url => fetch(url + '/admin/models/a/load', {method: 'POST', mode: 'no-cors'}).catch(() => null)"
        )
        page.evaluate(post, target)  # a simple POST: the browser sends it without asking first
        state = httpx.get(f"{target}/admin/models/a", timeout=30).json()["state"]
        assert state == "unloaded"  # refused by the gateway: its Origin is not the gateway's own
        page.goto(f"{target}/ui")  # the console's own origin may
        expect(page.locator("#session")).to_contain_text("open: no admin key")  # no login on an open gateway
        page.evaluate(post, target)
        assert httpx.get(f"{target}/admin/models/a", timeout=30).json()["state"] == "ready"
