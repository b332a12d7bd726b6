"""The dashboard in a real headless Chromium (Debian's, driven by Playwright) against a
running system: what it shows, an action clicked, screenshots kept as artifacts."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from matchmaker.devtools.cluster import wait_until
from matchmaker.messages import TaskRequest
from tests.api_support import ApiCluster, api_cluster

pytestmark = pytest.mark.timeout(180)
__all__ = ["api_cluster"]
CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "results" / "screenshots"


@pytest.fixture
def page() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield browser.new_page(viewport={"width": 1400, "height": 1100})
        finally:
            browser.close()


def test_dashboard_shows_the_system_and_cancels(api_cluster: ApiCluster, page: Any) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    c = api_cluster.cluster
    c.start_worker("iu-1", ["sleep", "data_staging"], 2, {"site": "iu", "speed": "fast"})
    c.start_worker("tacc-1", ["sleep"], 3, {"site": "tacc"})
    wait_until(lambda: len(api_cluster.get("/v1/workers")["workers"]) == 2, 15, "two workers")
    done = [TaskRequest(f"done-{i}", "sleep", {"seconds": 0.05}) for i in range(12)]
    c.wait_states(c.submit(*done))
    stuck = TaskRequest("stuck-1", "sleep", {"seconds": 0}, constraints={"site": "ncsa"})
    c.submit(stuck, TaskRequest("long-1", "sleep", {"seconds": 30}))
    c.wait_states(["stuck-1"], ("pending",))
    c.wait_states(["long-1"], ("running",))

    page.goto(api_cluster.url + "/")
    page.fill("#token", api_cluster.tokens["admin"])
    page.click("#login button")
    page.wait_for_selector("#workers tr[data-worker='tacc-1']")
    workers = page.inner_text("#workers tbody")
    assert "iu-1" in workers and "tacc-1" in workers and "fast" in workers
    page.wait_for_selector("#tasks tr[data-task='stuck-1']")
    tasks = page.inner_text("#tasks tbody")
    assert "done-3" in tasks and "long-1" in tasks
    page.wait_for_function("document.querySelector('#reasons tbody').innerText.includes('site')")
    page.screenshot(path=str(SHOTS / "dashboard-before-cancel.png"), full_page=True)

    page.click("#tasks tr[data-task='stuck-1'] button[data-cancel]")
    page.wait_for_selector("#tasks tr[data-task='stuck-1'] td.state-cancelled", timeout=15_000)
    assert c.task("stuck-1").state == "cancelled"  # type: ignore[union-attr]
    page.screenshot(path=str(SHOTS / "dashboard.png"), full_page=True)

    page.click("#tasks tr[data-task='done-3'] a")
    page.wait_for_selector("#task-body .timeline li")
    timeline = page.inner_text("#task-body")
    assert "succeeded" in timeline and "assigned" in timeline
    page.screenshot(path=str(SHOTS / "dashboard-task.png"), full_page=True)
    if os.environ.get("MM_DOCS_SCREENSHOT"):  # refresh the one in the docs on request
        shutil.copy(SHOTS / "dashboard-before-cancel.png", ROOT / "docs" / "dashboard.png")


def test_dashboard_without_token_is_read_only(api_cluster: ApiCluster, page: Any) -> None:
    page.goto(api_cluster.url + "/")
    page.wait_for_function("document.querySelector('#message').innerText.length > 0")
    assert "bearer token" in page.inner_text("#message")
