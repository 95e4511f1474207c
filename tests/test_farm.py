"""The farm view (eventbroker.contrib.farm): what it shows, who may see it, what its buttons do.

A small farm on one in-memory hub: a web instance (a cache, no scheduler) and a job instance (the
scheduler with a stoppable job), each an `AppServices` as the integrations build them. The page
of the web instance is asked through httpx's ASGI transport.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cache import CacheOptions, HybridCache
from eventbroker import (
    EventBroker,
    EventBrokerOptions,
    EventRaiseOption,
    Flow,
    InMemoryHub,
    InMemoryTransport,
)
from eventbroker.contrib._farm import (
    MAX_TEXT,
    FarmState,
    InstanceRow,
    farm_state,
    parse_summary,
)
from eventbroker.contrib._farm_html import fragment, page
from eventbroker.contrib._services import AppServices
from eventbroker.contrib.farm import CSRF_COOKIE, SESSION_COOKIE, FarmSettings, farm_app
from jobs import JobContext, JobOutcome, ScheduledJob

from ._support import wait_until

SECRET = "farm-secret-that-must-never-show"
TOKEN = "farm-token-0123456789abcdef"
EVENT = uuid.UUID("fa7e0000-0000-4000-8000-000000000001")
PRIVATE = uuid.UUID("fa7e0000-0000-4000-8000-000000000002")
RAISER = uuid.UUID("fa7e0000-0000-4000-8000-000000000003")


class SlowImport(ScheduledJob):
    id = uuid.UUID("fa7e0000-0000-4000-8000-0000000000aa")
    name = "Slow import"
    stoppable = True

    def __init__(self) -> None:
        self.release = threading.Event()

    def execute(self, ctx: JobContext) -> str:
        ctx.report_status("importing")
        for done in range(1, 1000):
            ctx.report_progress(done, 1000)
            if self.release.wait(0.02):
                return "imported"
            ctx.raise_if_stop_requested()
        return "gave up waiting"


class Farm:
    def __init__(self, tmp: Path) -> None:
        self.hub = InMemoryHub()
        options = EventBrokerOptions(secret=SECRET, application_name="shop")
        self.job = SlowImport()
        self.web = AppServices.build(
            transport=InMemoryTransport(self.hub),
            broker_options=options,
            caches=[CacheOptions(name="products")],
            run_jobs=False,
        )
        self.worker = AppServices.build(
            transport=InMemoryTransport(self.hub),
            broker_options=options,
            caches=(),
            run_jobs=True,
            jobs=[self.job],
            jobs_store=str(tmp / "jobs.sqlite3"),
        )
        self.worker.start()
        self.web.start()
        self.worker.broker.request_heartbeat()  # the web instance hears the worker's summary
        wait_until(lambda: any(i.summary for i in self.web.broker.instances), timeout=20)

    def client(self, app: Any = None, **settings: Any) -> httpx.Client:
        app = app or farm_app(self.web, settings=FarmSettings(**({"token": TOKEN} | settings)))
        return _Client(app)

    def stop(self) -> None:
        self.job.release.set()
        self.web.stop()
        self.worker.stop()


class _Client(httpx.Client):
    """A sync client over an ASGI app (the app runs on a loop of its own thread)."""

    def __init__(self, app: Any) -> None:
        import asyncio

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        transport = httpx.ASGITransport(app=app)
        loop = self._loop

        class SyncOverAsync(httpx.BaseTransport):
            def handle_request(self, request: httpx.Request) -> httpx.Response:
                async def run() -> httpx.Response:
                    response = await transport.handle_async_request(request)
                    body = await response.aread()
                    return httpx.Response(
                        response.status_code, headers=response.headers, content=body
                    )

                return asyncio.run_coroutine_threadsafe(run(), loop).result(30)

        super().__init__(transport=SyncOverAsync(), base_url="http://testserver")

    def close(self) -> None:
        super().close()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@pytest.fixture
def farm(tmp_path: Path) -> Iterator[Farm]:
    running = Farm(tmp_path)
    try:
        yield running
    finally:
        running.stop()


def _signed_in(client: httpx.Client) -> httpx.Client:
    assert client.get("/", params={"token": TOKEN}).status_code == 303
    return client


# -- who may see it ---------------------------------------------------------------------------------


def test_off_unless_configured(farm: Farm) -> None:
    with farm.client(token=None) as client:
        assert client.get("/").status_code == 404
        assert client.get("/", params={"token": TOKEN}).status_code == 404
        assert client.post(f"/jobs/{SlowImport.id}/run").status_code == 404


@pytest.mark.parametrize(
    "how",
    ["nothing", "wrong bearer", "wrong query", "wrong cookie", "wrong bearer, right cookie"],
)
def test_a_missing_or_wrong_token_is_401_with_nothing_rendered(farm: Farm, how: str) -> None:
    with farm.client() as client:
        headers, params = {}, {}
        if "bearer" in how:
            headers["Authorization"] = "Bearer not-the-token-at-all"
        if "query" in how:
            params["token"] = "not-the-token-at-all"
        if "right cookie" in how:
            _signed_in(client)
        elif "cookie" in how:
            client.cookies.set(SESSION_COOKIE, "f" * 64)
        for path in ("/", "/fragment"):
            response = client.get(path, headers=headers, params=params)
            assert response.status_code == 401
            assert response.content == b""
            assert response.headers["www-authenticate"].startswith("Bearer")
        csrf = client.cookies.get(CSRF_COOKIE) or "x"
        refused = client.post(
            f"/jobs/{SlowImport.id}/run", data={"csrf": csrf}, headers=headers, params=params
        )
        assert refused.status_code == 401 and refused.content == b""
    assert farm.worker.scheduler is not None
    assert farm.worker.scheduler.history(SlowImport.id) == []


def test_the_token_opens_the_page_once_then_an_httponly_cookie_carries_it(farm: Farm) -> None:
    with farm.client() as client:
        first = client.get("/", params={"token": TOKEN})
        assert first.status_code == 303 and first.headers["location"] == "/"
        cookies = first.headers.get_list("set-cookie")
        assert any(c.startswith(f"{SESSION_COOKIE}=") for c in cookies)
        for cookie in cookies:
            assert "HttpOnly" in cookie and "SameSite=strict" in cookie and TOKEN not in cookie
        shown = client.get("/")
        assert shown.status_code == 200
        csp = shown.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        nonce = csp.split("'nonce-")[1].split("'")[0]
        assert f'<script nonce="{nonce}">' in shown.text
        assert shown.headers["cache-control"] == "no-store"
    with farm.client() as client:  # a client of its own: the header, no cookie
        bearer = client.get("/fragment", headers={"Authorization": f"Bearer {TOKEN}"})
        assert bearer.status_code == 200 and "<section" in bearer.text


def test_the_host_app_may_bring_its_own_auth(farm: Farm) -> None:
    def staff_only(request: Any) -> bool:
        return request.headers.get("x-staff") == "yes"

    async def async_staff_only(request: Any) -> bool:
        return request.headers.get("x-staff") == "yes"

    def broken(request: Any) -> bool:
        raise RuntimeError("session store down")

    for hook in (staff_only, async_staff_only):
        with farm.client(farm_app(farm.web, auth=hook, settings=FarmSettings())) as client:
            assert client.get("/").status_code == 401
            assert client.get("/", headers={"x-staff": "yes"}).status_code == 200
    with farm.client(farm_app(farm.web, auth=broken, settings=FarmSettings())) as client:
        assert client.get("/", headers={"x-staff": "yes"}).status_code == 401


# -- what it shows -------------------------------------------------------------------------------


def test_the_page_shows_the_instances_caches_jobs_and_recent_events(farm: Farm) -> None:
    app = farm_app(
        farm.web,
        settings=FarmSettings(token=TOKEN),
        private_events=[PRIVATE],
        event_names={EVENT: "price changed"},
    )
    with farm.client(app) as client:
        _signed_in(client)
        client.get("/")  # from now on the page keeps the recent events
        registry = farm.worker.registry
        registry.get(EVENT).raise_(RAISER, {"sku": "A-1"}, EventRaiseOption.RAISE_BROADCAST)
        registry.get(PRIVATE).raise_(
            RAISER, {"card": "4111-1111"}, EventRaiseOption.RAISE_BROADCAST
        )
        farm.hub.drain()
        text = client.get("/fragment").text
    web, worker = farm.web.broker.instance_id, farm.worker.broker.instance_id
    assert f'class="instance this" data-instance="{web}"' in text
    assert f'class="instance up" data-instance="{worker}"' in text
    assert "<td>products</td>" in text  # the web instance's cache
    assert "Slow import" in text and "manual" in text and 'class="run"' in text  # the job
    assert "price changed" in text and "&quot;sku&quot;: &quot;A-1&quot;" in text
    assert "4111" not in text and "(private)" in text
    with farm.client(show_params=False) as client:
        _signed_in(client)
        client.get("/")
        farm.worker.registry.get(EVENT).raise_(RAISER, {"sku": "B-2"})
        farm.hub.drain()
        assert "B-2" not in client.get("/fragment").text


def test_no_secret_url_password_or_token_shows(farm: Farm) -> None:
    redis_url = "redis://:hunter2-password@127.0.0.1:6399/0"  # nothing listens there
    cache = HybridCache(CacheOptions(name="with-l2"), redis_url)
    farm.web.caches["with-l2"] = cache
    try:
        cache.get_or_set("k", lambda: 1)  # L2 unreachable: DEGRADED, the URL in its reasons
        with farm.client() as client:
            _signed_in(client)
            text = client.get("/").text
        assert "degraded" in text
        for secret in (SECRET, "hunter2-password", TOKEN):
            assert secret not in text
    finally:
        cache.close()


def test_an_instance_that_stops_is_marked(farm: Farm, tmp_path: Path) -> None:
    other = AppServices.build(
        transport=InMemoryTransport(farm.hub),
        broker_options=EventBrokerOptions(secret=SECRET, application_name="shop"),
        caches=(),
        run_jobs=False,
    )
    other.start()
    farm.hub.drain()
    with farm.client() as client:
        _signed_in(client)
        gone = other.broker.instance_id
        assert f'class="instance up" data-instance="{gone}"' in client.get("/fragment").text
        other.stop()  # its bye
        farm.hub.drain()
        assert f'class="instance gone" data-instance="{gone}"' in client.get("/fragment").text


# -- the buttons ---------------------------------------------------------------------------------


def test_run_now_from_an_instance_without_the_scheduler_runs_it_where_it_is(farm: Farm) -> None:
    scheduler = farm.worker.scheduler
    assert scheduler is not None
    with farm.client() as client:
        _signed_in(client)
        client.get("/")
        csrf = client.cookies[CSRF_COOKIE]
        path = f"/jobs/{SlowImport.id}/run"
        assert client.get(path).status_code == 405  # a POST only
        assert client.post(path).status_code == 403  # no CSRF token
        assert client.post(path, data={"csrf": "forged"}).status_code == 403
        cross = {"Origin": "https://evil.example"}
        assert client.post(path, data={"csrf": csrf}, headers=cross).status_code == 403
        site = {"Sec-Fetch-Site": "cross-site"}
        assert client.post(path, data={"csrf": csrf}, headers=site).status_code == 403
        assert client.post(f"/jobs/{uuid.uuid4()}/run", data={"csrf": csrf}).status_code == 404
        assert client.post(f"/jobs/{SlowImport.id}/jump", data={"csrf": csrf}).status_code == 404
        many = "&".join(f"f{i}=1" for i in range(20)) + f"&csrf={csrf}"
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        assert client.post(path, content=many, headers=form).status_code == 403
        assert (
            client.post(path, content="x" * 5000 + f"&csrf={csrf}", headers=form).status_code == 403
        )
        assert scheduler.history(SlowImport.id) == []
        done = client.post(path, data={"csrf": csrf}, headers={"Origin": "http://testserver"})
        assert done.status_code == 303 and done.headers["location"] == "/?done=run"
        wait_until(lambda: scheduler.is_running(SlowImport.id), timeout=20)
        # the job's progress reports ask for an early heartbeat: the page shows the run
        wait_until(lambda: "running</span> on" in client.get("/fragment").text, timeout=20)
        farm.job.release.set()
        wait_until(
            lambda: [r.outcome for r in scheduler.history(SlowImport.id)] == [JobOutcome.SUCCEEDED]
        )
        wait_until(lambda: "imported" in client.get("/fragment").text, timeout=20)


def test_stop_reaches_the_instance_running_the_job_through_the_broker(farm: Farm) -> None:
    scheduler = farm.worker.scheduler
    assert scheduler is not None
    scheduler.run_now(SlowImport.id)
    wait_until(lambda: scheduler.is_running(SlowImport.id), timeout=20)
    with farm.client() as client:
        _signed_in(client)
        wait_until(lambda: "Stop</button>" in client.get("/fragment").text, timeout=20)
        csrf = client.cookies[CSRF_COOKIE]
        done = client.post(f"/jobs/{SlowImport.id}/stop", data={"csrf": csrf})
        assert done.status_code == 303 and done.headers["location"] == "/?done=stop"
        assert "Stop requested" in client.get("/?done=stop").text
    farm.hub.drain()
    wait_until(
        lambda: [r.outcome for r in scheduler.history(SlowImport.id)] == [JobOutcome.STOPPED],
        timeout=20,
    )


# -- hostile peers ---------------------------------------------------------------------------------

HOSTILE = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2">"\'&'

_ALLOWED_TAGS = {
    "section", "h2", "h3", "small", "table", "thead", "tbody", "tr", "th", "td", "p", "span",
    "div", "code", "b", "ul", "li", "svg", "line", "text", "rect", "title", "polyline",
    "circle", "article", "form", "input", "button", "progress", "time",
}  # fmt: skip


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, attrs))


def _assert_inert(html: str) -> None:
    parser = _Tags()
    parser.feed(html)
    for tag, attributes in parser.found:
        assert tag in _ALLOWED_TAGS, tag
        for name, value in attributes:
            assert not name.startswith("on"), (tag, name)
            if name in ("action", "href", "src"):
                assert value is not None and value.startswith("/jobs/"), value


def test_a_hostile_peer_is_shown_as_text(farm: Farm, monkeypatch: pytest.MonkeyPatch) -> None:
    # a peer that ignores the size limit (the receiver's page bounds what it shows on its own)
    monkeypatch.setattr("eventbroker._broker.MAX_SUMMARY_BYTES", 10**6)
    peer = EventBroker(
        InMemoryTransport(farm.hub),
        EventBrokerOptions(secret=SECRET, application_name="shop", site_id=HOSTILE),
    )
    peer.host = HOSTILE
    job_id = str(uuid.uuid4())
    peer.summary_provider = lambda: {
        "v": 1,
        "conn": HOSTILE,
        "health": "degraded",
        "reasons": [HOSTILE, 12, None],
        "events": {"in": 10**400, "out": -3, "lag_p50": 1e308, "refused_1m": {HOSTILE: 2}},
        "caches": [{"name": HOSTILE, "entries": True, "l2": HOSTILE}] * 50,
        "jobs": [
            {
                "id": job_id,
                "name": HOSTILE,
                "schedule": HOSTILE,
                "running": {"run": HOSTILE, "status": HOSTILE * 100, "done": 5, "total": 3},
                "runs": [{"run": HOSTILE, "outcome": HOSTILE, "status": HOSTILE}],
            }
        ],
    }
    with peer:
        farm.hub.drain()
        peer.raise_event(EVENT, RAISER, {"html": HOSTILE})
        farm.hub.drain()
        with farm.client() as client:
            _signed_in(client)
            client.get("/")
            peer.raise_event(EVENT, RAISER, {"html": HOSTILE})
            farm.hub.drain()
            full = client.get("/").text
            part = client.get("/fragment").text
    body = full.split('<main id="farm"', 1)[1].split("</main>", 1)[0]
    _assert_inert(part)
    _assert_inert(body.split(">", 1)[1])
    assert "<script>window" not in full and "<img" not in full
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in part
    assert job_id in part  # the hostile peer's job is listed, as text


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
        lambda inner: st.lists(inner, max_size=5)
        | st.dictionaries(
            st.sampled_from(["v", "conn", "health", "reasons", "events", "caches", "jobs",
                             "name", "id", "run", "runs", "running", "status", "in", "done"])
            | st.text(max_size=5),
            inner,
            max_size=8,
        ),
        max_leaves=40,
    )
)  # fmt: skip
def test_any_summary_parses_to_the_known_shape_or_none(raw: object) -> None:
    for value in (raw, {"v": 1, "caches": raw, "jobs": raw, "events": raw, "reasons": raw}):
        summary = parse_summary(value)
        if summary is None:
            continue
        assert summary.health in ("ok", "degraded", "down")
        assert all(len(r) <= MAX_TEXT for r in summary.reasons)
        for cache in summary.caches:
            assert 0 <= cache.entries <= 2**53 and cache.l2 in ("none", "ok", "open")
        for job in summary.jobs:
            assert len(job.runs) <= 3
        state = FarmState(
            0.0,
            "shop",
            (InstanceRow("i", "shop", None, None, None, None, "up", summary),),
            Flow(()),
            (),
            (),
        )
        _assert_inert(fragment(state, base="", csrf="c"))


def test_the_page_renders_with_nothing_heard_yet() -> None:
    hub = InMemoryHub()
    services = AppServices.build(
        transport=InMemoryTransport(hub),
        broker_options=EventBrokerOptions(secret=SECRET),
        caches=(),
        run_jobs=False,
    )
    with services:
        state = farm_state(services.reporter, now=time.time())
        html = page(state, base="/_eventbroker", csrf="c", nonce="n", refresh=0, host="h")
    assert 'data-refresh="0"' in html and "no instance reports a job scheduler" in html


def test_an_instance_that_missed_a_heartbeat_is_late() -> None:
    from eventbroker._presence import InstanceInfo
    from eventbroker.contrib._farm import _state_of

    info = InstanceInfo("i", "shop", None, "h", 0.0, 1000.0, None, 30.0)
    assert _state_of(info, 1000.0 + 45) == "up"  # within one and a half intervals
    assert _state_of(info, 1000.0 + 46) == "late"
    assert _state_of(attrs.evolve(info, heartbeat_interval=0.0), 1e6) == "up"  # sends none
