"""The farm view in a real browser: Debian's headless Chromium drives the page of the running demo.

The demo (``python -m samples.inventory --serve``) runs two web instances and a job instance;
the browser opens web-1's farm view with the token and sees all three, a raised event move the
counters, a run started with the Run now button appear, the page without JavaScript, and a 401
for a wrong token. Screenshots go to test-artifacts/ (gitignored). Without Chromium this fails.
"""

from __future__ import annotations

import json
import os
import queue
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import attrs
import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount

from eventbroker import EventBroker, EventBrokerOptions, InMemoryHub, InMemoryTransport
from eventbroker.contrib._services import AppServices
from eventbroker.contrib.farm import FarmSettings, farm_app
from tests._browser import ARTIFACTS, ROOT, Browser, find_chromium

pytestmark = pytest.mark.slow

_LINE = re.compile(r"^\[\+\s*[0-9.]+s\] (?P<text>.*)$")


class Demo:
    """The demo in serving mode, in its own process."""

    def __init__(self, token: str) -> None:
        env = {
            k: v
            for k, v in os.environ.items()
            if k != "DATABASE_URL" and not k.startswith("EVENTBROKER_")
        }
        env.update(EVENTBROKER_FARM_TOKEN=token, EVENTBROKER_FARM_REFRESH="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "samples.inventory", "--serve"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.instances: dict[str, str] = {}
        self.urls: dict[str, str] = {}
        self.farm_url = ""

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            self.lines.put(line.rstrip("\n"))

    def wait_serving(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        serving = False
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
            match = _LINE.match(line)
            text = match.group("text") if match else line
            if "== Serving until Ctrl-C" in text:
                serving = True
            elif serving and (
                found := re.match(r"(web-\d): (\S+)/products/\S+ \(instance (\w+)\)", text)
            ):
                self.urls[found.group(1)] = found.group(2)
                self.instances[found.group(1)] = found.group(3)
            elif serving and (found := re.match(r"job-1: instance (\w+)", text)):
                self.instances["job-1"] = found.group(1)
            elif serving and (found := re.match(r"farm view: (\S+)", text)):
                self.farm_url = found.group(1)
                return
        raise AssertionError("the demo did not start serving:\n" + "".join(self.output))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def demo() -> Iterator[Demo]:
    running = Demo(secrets.token_urlsafe(24))
    try:
        running.wait_serving()
        yield running
    finally:
        running.stop()


def test_chromium_is_there() -> None:
    """The browser tests need Debian's chromium; this fails (never skips) when it cannot be had."""
    assert find_chromium() is not None, (
        "Chromium is missing and could not be installed: run `bash scripts/chromium.sh` as root "
        "(apt-get install -y chromium)"
    )


def _events_in(browser: Browser) -> int:
    text = browser.evaluate(
        "(document.querySelector('tr.instance.this td.events-in') || {}).textContent"
    )
    return int(text) if text and str(text).isdigit() else -1


def test_the_farm_view_of_the_running_demo(demo: Demo) -> None:
    chromium = find_chromium()
    if chromium is None:
        pytest.fail(
            "Chromium is missing: run `bash scripts/chromium.sh` (apt-get install chromium)"
        )
    web1, web2, job1 = (demo.instances[name] for name in ("web-1", "web-2", "job-1"))
    base = demo.farm_url.split("?", 1)[0]
    with Browser(chromium) as browser:
        # the token opens the page once; it leaves the address bar, a cookie carries it
        browser.navigate(demo.farm_url)
        assert browser.navigation_status() == 200
        assert browser.evaluate("location.search") == ""

        # both web instances and the job instance, this page's own marked
        rows = browser.wait_for(
            "(() => { const ids = [...document.querySelectorAll('tr.instance')]"
            ".map(r => r.dataset.instance); "
            f"return [{json.dumps(web1)}, {json.dumps(web2)}, {json.dumps(job1)}]"
            ".every(i => ids.includes(i)) && ids; })()"
        )
        assert set(rows) >= {web1, web2, job1}
        assert (
            browser.evaluate("document.querySelector('tr.instance.this').dataset.instance") == web1
        )
        assert browser.evaluate("document.getElementById('live').textContent").startswith("live")

        # a raised event (web-2 loads a product and tells the others) moves web-1's counters
        before = _events_in(browser)
        assert before >= 0
        with httpx.Client(timeout=10) as client:
            assert client.get(f"{demo.urls['web-2']}/products/SKU-007").status_code == 200
        browser.wait_for(
            "Number(document.querySelector('tr.instance.this td.events-in').textContent) > "
            f"{before}",
            timeout=10,
        )

        # Run now starts the import on job-1; its run appears with its outcome
        runs_before = browser.evaluate(
            "[...document.querySelectorAll('article.job tr.run')].map(r => r.dataset.run)"
        )
        browser.evaluate("document.querySelector('article.job button.run').click()")
        browser.wait_for("!!document.querySelector('.notice')", timeout=10)
        assert browser.evaluate("location.search") == "?done=run"
        new_run = browser.wait_for(
            "(() => { const before = " + json.dumps(runs_before) + "; "
            "const row = [...document.querySelectorAll('article.job tr.run')]"
            ".find(r => !before.includes(r.dataset.run)); "
            "return row && row.querySelector('.badge').textContent; })()",
            timeout=30,
        )
        assert new_run == "succeeded"
        browser.screenshot(ARTIFACTS / "farm-view.png")

        # without JavaScript the page is a snapshot with everything in it
        browser.call("Emulation.setScriptExecutionDisabled", value=True)
        browser.navigate(base)
        assert browser.navigation_status() == 200
        assert browser.evaluate("document.getElementById('live').textContent").startswith(
            "snapshot"
        )
        assert browser.evaluate("document.querySelectorAll('tr.instance').length") >= 3
        browser.call("Emulation.setScriptExecutionDisabled", value=False)

        # a wrong token: 401 and nothing of the page (Chromium shows its own error page for an
        # empty 401), even with the session cookie
        browser.navigate(f"{base}?token=wrong-{secrets.token_urlsafe(8)}")
        assert browser.navigation_status() == 401
        shown = browser.evaluate("document.documentElement.outerHTML")
        assert "tr" not in browser.evaluate("[...document.querySelectorAll('tr')].join()")
        assert not any(i in shown for i in (web1, web2, job1)) and "Farm:" not in shown

    with httpx.Client(timeout=10) as client:
        refused = client.get(base)
        assert refused.status_code == 401 and refused.content == b""
    assert demo.stop() == 0, "".join(demo.output)
    assert "checks held." in "".join(demo.output)


HOSTILE = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'


def test_a_hostile_peer_cannot_run_script_in_the_page(tmp_path: Path) -> None:
    """A peer with the secret (or a bug) sends markup as its host, site, summary, job status and
    event params: the browser shows it as text, before and after the live updates."""
    chromium = find_chromium()
    if chromium is None:
        pytest.fail(
            "Chromium is missing: run `bash scripts/chromium.sh` (apt-get install chromium)"
        )
    token = secrets.token_urlsafe(24)
    hub = InMemoryHub()
    options = EventBrokerOptions(secret="hostile-test-secret-0123", application_name="shop")
    services = AppServices.build(
        transport=InMemoryTransport(hub), broker_options=options, caches=["products"]
    )
    peer = EventBroker(InMemoryTransport(hub), attrs.evolve(options, site_id=HOSTILE))
    peer.host = HOSTILE
    peer.summary_provider = lambda: {
        "v": 1,
        "health": "degraded",
        "reasons": [HOSTILE],
        "caches": [{"name": HOSTILE}],
        "jobs": [
            {
                "id": str(uuid.uuid4()),
                "name": HOSTILE,
                "schedule": HOSTILE,
                "running": {"run": "r1", "status": HOSTILE, "done": 1, "total": 2},
                "runs": [{"run": "r0", "outcome": "failed", "status": HOSTILE}],
            }
        ],
    }
    app = Starlette(
        routes=[
            Mount(
                "/_eventbroker", farm_app(services, settings=FarmSettings(token=token, refresh=0.5))
            )
        ]
    )
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    sock = socket.create_server(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    services.start()
    peer.start()
    thread.start()
    try:
        while not server.started:
            time.sleep(0.01)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/_eventbroker/"
        with Browser(chromium) as browser:
            browser.navigate(f"{url}?token={token}")
            peer.raise_event(uuid.uuid4(), uuid.uuid4(), {"html": HOSTILE})
            hub.drain()
            browser.wait_for(
                "document.body.innerText.includes('window.__xss=2') && "
                "document.body.innerText.includes('\"html\"')",
                timeout=15,
            )
            time.sleep(1.5)  # a few live updates swapped in
            assert browser.evaluate("typeof window.__xss") == "undefined"
            assert (
                browser.evaluate("document.querySelectorAll('main img, main script').length") == 0
            )
            browser.screenshot(ARTIFACTS / "farm-hostile-peer.png")
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
        peer.stop()
        services.stop()
