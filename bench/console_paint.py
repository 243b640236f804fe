"""The web console's first paint and transfer per page, measured in a real browser (issue 22's targets: first
paint over loopback under 300 ms, each page at most ~200 KB transferred).

A gateway (its own process, an admin key, 8 ``remote`` models, 200 requests in its activity) serves /ui on
loopback; Debian's chromium, driven by Playwright, opens each page in a fresh browser context (a cold cache,
a new tab session with the key in its sessionStorage, as after a login) ``--runs`` times. From the browser's
own timing API: first paint and first contentful paint (``performance.getEntriesByType('paint')``), the time
until the page shows the gateway's data, and the bytes transferred (the navigation and every resource and
fetch until then: ``transferSize``, headers included), with the bodies' decoded size beside them.

    python bench/console_paint.py [--runs N]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

import httpx
import yaml
from _table import print_table  # bench/, on the path when run as a script
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.proxy_overhead import spawn, wait_http  # noqa: E402
from tests.fake_upstream import FakeUpstream, RunningUpstream  # noqa: E402

KEY = "bench-admin-key"
PORT, UPSTREAM_PORT = 18991, 18992
# each page, and what shows that its data has arrived
PAGES = {
    "models": "#models-rows tr[data-row='m0']",
    "devices": "#devices-list .card",
    "logs": "#logs-model option[value='m0']",
    "activity": "#activity-rows tr[data-id]",
    "playground": "#chat-model option[value='m0']",
}
MEASURE = """() => {
  const paint = Object.fromEntries(performance.getEntriesByType('paint').map(e => [e.name, e.startTime]));
  const nav = performance.getEntriesByType('navigation')[0];
  const resources = performance.getEntriesByType('resource');
  const sum = (list, key) => list.reduce((a, e) => a + (e[key] || 0), 0);
  return {
    fp: paint['first-paint'], fcp: paint['first-contentful-paint'], shown: performance.now(),
    html: nav.responseEnd,
    transferred: nav.transferSize + sum(resources, 'transferSize'),
    decoded: nav.decodedBodySize + sum(resources, 'decodedBodySize'),
    requests: 1 + resources.length,
  };
}"""


def arg(name: str, default: int) -> int:
    return int(sys.argv[sys.argv.index(name) + 1]) if name in sys.argv else default


def main() -> None:
    runs = arg("--runs", 7)
    manifests = Path(tempfile.mkdtemp())
    for i in range(8):
        endpoint = {"url": f"http://127.0.0.1:{UPSTREAM_PORT}"}
        manifest = {"name": f"m{i}", "backend": {"kind": "remote", "endpoints": [endpoint]}}
        (manifests / f"m{i}.yaml").write_text(yaml.safe_dump(manifest))
    with RunningUpstream(FakeUpstream(), UPSTREAM_PORT):
        proc = spawn(
            [sys.executable, "-m", "gateway.cli", "serve", "--manifests", str(manifests), "--port", str(PORT),
             "--log-level", "warning"],
            "0",
            env={"GATEWAY_ADMIN_KEY": KEY, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        base = f"http://127.0.0.1:{PORT}"
        try:
            wait_http(f"{base}/health")
            auth = {"authorization": f"Bearer {KEY}"}
            with httpx.Client(base_url=base, headers=auth, timeout=30) as client:
                for i in range(200):  # a full activity (the default GATEWAY_ACTIVITY_SIZE)
                    body = {"model": f"m{i % 8}", "messages": [{"role": "user", "content": "x"}]}
                    client.post("/v1/chat/completions", json=body).raise_for_status()
                for i in range(4):
                    client.post(f"/admin/models/m{i}/load").raise_for_status()
            results = measure(base, runs)
        finally:
            proc.terminate()
            proc.wait(30)
    rows = []
    for page, samples in results.items():
        med = {
            k: statistics.median(s[k] for s in samples) for k in ("html", "fp", "fcp", "shown", "fp_again")
        }
        most = max(samples, key=lambda s: s["transferred"])
        rows.append(
            [
                page,
                f"{med['html']:.0f}",
                f"{med['fp']:.0f}",
                f"{med['fcp']:.0f}",
                f"{med['shown']:.0f}",
                f"{med['fp_again']:.0f}",
                f"{most['transferred'] / 1000:.1f}",
                f"{most['decoded'] / 1000:.1f}",
                str(most["requests"]),
            ]
        )
    print(f"chromium, loopback, a fresh context per run; medians of {runs} runs, the largest transfer")
    print_table(
        ["page", "page received ms", "first paint ms", "first contentful paint ms", "data shown ms",
         "first paint, reload ms", "transferred KB", "decoded KB", "requests"],
        rows,
    )  # fmt: skip


def measure(base: str, runs: int) -> dict[str, list[dict[str, float]]]:
    results: dict[str, list[dict[str, float]]] = {page: [] for page in PAGES}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        try:
            for _ in range(runs):
                for page, ready in PAGES.items():
                    context = browser.new_context(viewport={"width": 1280, "height": 800})
                    context.add_init_script(f"sessionStorage.setItem('llm-gateway.admin-key', {KEY!r})")
                    tab = context.new_page()
                    tab.goto(f"{base}/ui#/{page}")
                    tab.wait_for_selector(ready, state="attached")
                    sample = tab.evaluate(MEASURE)
                    tab.reload()  # the same tab again: its files revalidated (304), the key kept
                    tab.wait_for_selector(ready, state="attached")
                    sample["fp_again"] = tab.evaluate(MEASURE)["fp"]
                    results[page].append(sample)
                    context.close()
        finally:
            browser.close()
    return results


if __name__ == "__main__":
    main()
