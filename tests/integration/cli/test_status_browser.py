"""The status page as a newcomer sees it: Debian's headless Chromium opens `iris up`'s address (the root
redirects a browser to `/status`) under load; the page loads with no console error and no request to any
host but Iris, and within 5 s its DOM shows queue depths and running counts equal to the broker's own
`BrokerStats` of that moment (the page names the stats it shows by their `sent_ms`; those must be among
the broker's last two). It never shows a prompt or a user id. The screenshot's path is printed; with
`IRIS_STATUS_SCREENSHOT=PATH` it is copied there too.

Needs `chromium` and `chromium-driver` (Debian packages; `./install.sh --dev` installs them as root)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import nats
import pytest

from iris.sdk.client import Client
from schemas.errors import IrisError
from schemas.messages import BrokerStats, broker_stats_decoder
from schemas.subjects import BROKER_STATS_SUBJECT
from tests.integration.cli.test_up_supervision import iris_up

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (a dev dependency) is not installed")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)",
    ),
]
SHOWN_WITHIN_S = 5.0
FLOWS_JS = """
return {sent: document.body.dataset.sentMs, rows: Array.from(
  document.querySelectorAll('#workloads tr[data-flow]'), function (tr) {
    return [tr.dataset.flow, Number(tr.querySelector('[data-field=queued]').textContent),
            Number(tr.querySelector('[data-field=running]').textContent)];
  })};
"""


def chromium() -> Any:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1500",
    ):
        options.add_argument(flag)
    options.add_argument("--no-first-run")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))


def flows(stats: BrokerStats) -> dict[str, tuple[int, int]]:
    return {f"{w.model}/{w.workload}": (w.queued, w.running) for w in stats.workloads}


async def load(client: Client, stop: asyncio.Event) -> None:
    """Two tiers as the reference labels them, a closed loop per user, and an impatient user whose
    deadlines the queue cannot meet (rejections for the page to list)."""

    async def user(workload: str, priority: int, name: str, deadline_s: float = 60.0) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            prompt = f"secret prompt of {name} number {i}"
            options = {"workload": workload, "priority": priority, "user": name, "deadline_s": deadline_s}
            try:
                await client.complete(prompt, model="fake", max_tokens=30, **options)
            except IrisError:
                await asyncio.sleep(0.5)  # refused, as wanted: the impatient user tries again a bit later

    users = [user("paid", 5, f"alice-{i}") for i in range(4)] + [user("open-source", 1, f"bob-{i}") for i in range(6)]
    await asyncio.gather(*users, user("open-source", 1, "bob-impatient", deadline_s=0.3))


async def test_a_browser_sees_the_brokers_queues_live(tmp_path: Path) -> None:
    flags = ("--workers", "1", "--slots", "2", "--fake-tps", "30", "--metrics-port", "0")
    with iris_up(tmp_path, tmp_path / "state", "up", *flags) as up:
        console = up.console()
        status_url = next(line.split()[1] for line in console.splitlines() if line.strip().startswith("status"))
        base = status_url.removesuffix("/status")
        nc = await nats.connect(up.url)
        heard: list[BrokerStats] = []

        async def on_stats(msg: Any) -> None:
            heard.append(broker_stats_decoder.decode(msg.data))

        await nc.subscribe(BROKER_STATS_SUBJECT, cb=on_stats)
        stop = asyncio.Event()
        client = Client(nc)
        loading = asyncio.ensure_future(load(client, stop))
        driver = await asyncio.to_thread(chromium)
        try:
            await _wait_for_queue(heard)
            await asyncio.to_thread(driver.get, base + "/")
            opened_s = time.monotonic()
            shown = await _shown(driver, heard, opened_s)
            await asyncio.sleep(5)  # a few more updates, so the charts have a line (the screenshot only)
            screenshot = tmp_path / "status.png"
            await asyncio.to_thread(driver.save_screenshot, str(screenshot))
            print(f"status page screenshot: {screenshot}")
            if os.environ.get("IRIS_STATUS_SCREENSHOT"):
                shutil.copy(screenshot, os.environ["IRIS_STATUS_SCREENSHOT"])
            source = driver.page_source
            console_log = driver.get_log("browser")
            requests = _requested_urls(driver.get_log("performance"))
        finally:
            stop.set()
            await asyncio.to_thread(driver.quit)
            await asyncio.wait_for(loading, 60)
            await nc.close()
    assert shown["rows"], "the page showed no workload"
    assert [e for e in console_log if e["level"] == "SEVERE"] == [], console_log
    assert requests and all(url.startswith(base + "/") or url.startswith("data:") for url in requests), requests
    assert f"{base}/status/events" in requests
    assert "secret prompt" not in source and "alice" not in source and "bob-" not in source
    assert screenshot.stat().st_size > 20_000


async def _wait_for_queue(heard: list[BrokerStats], timeout_s: float = 60.0) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if heard and sum(q for q, _ in flows(heard[-1]).values()) > 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the broker never reported a queue under load")


async def _shown(driver: Any, heard: list[BrokerStats], opened_s: float) -> dict[str, Any]:
    """The DOM's rows once they match the broker's stats they name, and those stats are among its last two."""
    last: dict[str, Any] = {}
    while time.monotonic() - opened_s < SHOWN_WITHIN_S:
        last = await asyncio.to_thread(driver.execute_script, FLOWS_JS)
        by_sent = {s.sent_ms: s for s in heard[-2:]}
        stats = by_sent.get(int(last["sent"])) if last.get("sent") else None
        if stats is not None and {flow: (q, r) for flow, q, r in last["rows"]} == flows(stats):
            assert any(q for _, q, _ in last["rows"]), "no queue in the stats shown: not under load"
            return last
        await asyncio.sleep(0.1)
    tail = [(s.sent_ms, flows(s)) for s in heard[-3:]]
    raise AssertionError(f"within {SHOWN_WITHIN_S} s the page showed {last}, the broker's last stats were {tail}")


def _requested_urls(performance_log: list[dict[str, Any]]) -> list[str]:
    urls = []
    for entry in performance_log:
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls
