"""The farm view: one page that shows every instance, the event flow, caches and jobs.

An ASGI app (Starlette; ``pip install "eventbroker-cache[starlette]"``) to mount in a
Starlette or FastAPI app, or in front of Django's ASGI handler:

```python
from eventbroker.contrib.farm import farm_app
from eventbroker.contrib.starlette import EventBrokerLifespan

services = EventBrokerLifespan(caches=["products"])
app = FastAPI(lifespan=services)
app.mount("/_eventbroker", farm_app(services))          # token from EVENTBROKER_FARM_TOKEN
```

Off unless configured: without a token (``EVENTBROKER_FARM_TOKEN``) and without an `auth`
hook every request is a 404. With one, every request must carry the token (``Authorization:
Bearer <token>``, or ``?token=<token>`` once: the page then sets an HttpOnly, SameSite=Strict
cookie and drops the token from the address) or pass the hook; anything else is a 401 with an
empty body. The run and stop buttons are POST forms with a CSRF token (a cookie that must match
the form field; a cross-site Origin is refused). See docs/farm.md.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
import logging
import secrets
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs

try:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, RedirectResponse, Response
    from starlette.routing import Route
except ImportError as exc:  # pragma: no cover - exercised in a subprocess without starlette
    raise ModuleNotFoundError(
        "eventbroker.contrib.farm needs Starlette: "
        'pip install "eventbroker-cache[starlette]" (FastAPI includes it)',
        name=exc.name,
    ) from exc

from cache._settings import EnvSettings, env, hidden_repr, number

from ._farm import FarmReporter, FarmState, farm_state, request_run, request_stop
from ._farm_html import fragment, page
from ._services import AppServices

__all__ = ["FarmSettings", "farm_app"]

logger = logging.getLogger("eventbroker.contrib.farm")

SESSION_COOKIE = "eventbroker_farm"
CSRF_COOKIE = "eventbroker_farm_csrf"
_MAX_FORM = 4096
_MIN_TOKEN = 16

Auth = Callable[[Request], bool | Awaitable[bool]]
"""The host app's own check: True lets the request in (a signed-in staff user, say)."""
Source = AppServices | Callable[[], AppServices | None] | Any
"""Where the page finds the instance's services: an `AppServices`, an `EventBrokerLifespan`
(its ``services`` once started), or a function returning them (None: not started yet)."""


def _token(value: str | None) -> str | None:
    if value is not None and len(value) < _MIN_TOKEN:
        raise ValueError(
            f"FarmSettings.token must have at least {_MIN_TOKEN} characters (a long random "
            "string: python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return value


@attrs.frozen
class FarmSettings(EnvSettings):
    """The farm view's settings; `from_env()` reads the ``EVENTBROKER_FARM_*`` variables."""

    token: str | None = attrs.field(
        default=None,
        converter=_token,
        repr=hidden_repr,
        metadata=env("EVENTBROKER_FARM_TOKEN", secret=True),
    )
    """The token every request must carry; none (and no `auth` hook): the view is off (404)."""
    refresh: float = attrs.field(
        default=2.0,
        validator=number(minimum=0, note="0: no live updates"),
        metadata=env("EVENTBROKER_FARM_REFRESH"),
    )
    """Seconds between the page's live updates (0: a static page)."""
    show_params: bool = attrs.field(default=True, metadata=env("EVENTBROKER_FARM_SHOW_PARAMS"))
    """Whether recent events show their params (those of `private_events` never show)."""


def _resolve(source: Source) -> AppServices | None:
    if isinstance(source, AppServices):
        return source
    if hasattr(source, "services"):  # an EventBrokerLifespan: its services once started
        services = source.services
        return services if isinstance(services, AppServices) else None
    if callable(source):
        found = source()
        return found if isinstance(found, AppServices) else None
    return None


def _session_value(token: str) -> str:
    """What the session cookie holds: derived from the token, never the token itself."""
    return hmac.new(token.encode(), b"eventbroker farm session", hashlib.sha256).hexdigest()


def _same_origin(request: Request) -> bool:
    """False when the browser says the request came from another site (``Sec-Fetch-Site``,
    else ``Origin``); a client that sends neither (not a browser) passes on to the CSRF check."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None:
        return True
    parts = urlsplit(origin)
    return parts.netloc == request.headers.get("host", "") and parts.scheme in ("http", "https")


_SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


def _csp(nonce: str) -> str:
    return (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
        "img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; "
        "frame-ancestors 'none'"
    )


def _unauthorized() -> Response:
    return Response(
        b"",
        status_code=401,
        headers={**_SECURITY_HEADERS, "WWW-Authenticate": 'Bearer realm="eventbroker farm"'},
    )


class _Farm:
    def __init__(
        self,
        source: Source,
        settings: FarmSettings,
        auth: Auth | None,
        private_events: Collection[uuid.UUID],
        event_names: Mapping[uuid.UUID, str] | None,
    ) -> None:
        self.source = source
        self.settings = settings
        self.auth = auth
        self.private_events = frozenset(private_events)
        self.event_names = dict(event_names or {})
        self.enabled = settings.token is not None or auth is not None
        self._session = None if settings.token is None else _session_value(settings.token)

    # -- security -------------------------------------------------------------------------------

    async def allowed(self, request: Request) -> bool:
        """The token (a presented one decides: a wrong one is refused whatever the cookie
        says), else the session cookie, else the host app's hook."""
        token = self.settings.token
        if token is not None:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            presented = given.strip() if scheme.lower() == "bearer" else None
            if presented is None:
                presented = request.query_params.get("token")
            if presented is not None:
                return _same(presented, token)
            cookie = request.cookies.get(SESSION_COOKIE, "")
            if self._session is not None and _same(cookie, self._session):
                return True
        if self.auth is not None:
            try:
                verdict = self.auth(request)
                if inspect.isawaitable(verdict):
                    verdict = await verdict
            except Exception:
                logger.warning("the farm view's auth hook failed: request refused", exc_info=True)
                return False
            return verdict is True
        return False

    def _cookies(self, response: Response, request: Request, csrf: str) -> None:
        path = request.scope.get("root_path", "") or "/"
        secure = request.url.scheme == "https"
        if request.cookies.get(CSRF_COOKIE) != csrf:
            response.set_cookie(
                CSRF_COOKIE, csrf, path=path, httponly=True, samesite="strict", secure=secure
            )
        if self._session is not None and request.cookies.get(SESSION_COOKIE) != self._session:
            token = self.settings.token
            if token is not None and request.query_params.get("token") is not None:
                response.set_cookie(
                    SESSION_COOKIE,
                    self._session,
                    path=path,
                    httponly=True,
                    samesite="strict",
                    secure=secure,
                )

    # -- the data -----------------------------------------------------------------------------

    def reporter(self) -> FarmReporter | None:
        services = _resolve(self.source)
        if services is None:
            return None
        services.reporter.watch_events()  # from the first look on (idempotent)
        return services.reporter

    async def state(self, reporter: FarmReporter) -> FarmState:
        return await asyncio.to_thread(
            farm_state,
            reporter,
            event_names=self.event_names,
            private_events=self.private_events,
            show_params=self.settings.show_params,
        )

    # -- endpoints ------------------------------------------------------------------------------

    async def guard(self, request: Request) -> Response | None:
        if not self.enabled:
            return Response(b"Not Found", status_code=404, media_type="text/plain")
        if not await self.allowed(request):
            return _unauthorized()
        return None

    async def index(self, request: Request) -> Response:
        refused = await self.guard(request)
        if refused is not None:
            return refused
        base = request.scope.get("root_path", "").rstrip("/")
        if request.query_params.get("token") is not None:
            # the token leaves the address bar (and history) at once; the cookie carries it
            response: Response = RedirectResponse(f"{base}/", status_code=303)
            self._cookies(response, request, request.cookies.get(CSRF_COOKIE) or _new_csrf())
            response.headers.update(_SECURITY_HEADERS)
            return response
        reporter = await asyncio.to_thread(self.reporter)
        if reporter is None:
            return _not_started()
        csrf = request.cookies.get(CSRF_COOKIE) or _new_csrf()
        nonce = secrets.token_urlsafe(16)
        state = await self.state(reporter)
        done = request.query_params.get("done")
        body = page(
            state,
            base=base,
            csrf=csrf,
            nonce=nonce,
            refresh=self.settings.refresh,
            host=reporter.broker.host,
            done=done,
        )
        response = HTMLResponse(
            body, headers={**_SECURITY_HEADERS, "Content-Security-Policy": _csp(nonce)}
        )
        self._cookies(response, request, csrf)
        return response

    async def part(self, request: Request) -> Response:
        refused = await self.guard(request)
        if refused is not None:
            return refused
        reporter = await asyncio.to_thread(self.reporter)
        if reporter is None:
            return _not_started()
        csrf = request.cookies.get(CSRF_COOKIE) or _new_csrf()
        base = request.scope.get("root_path", "").rstrip("/")
        state = await self.state(reporter)
        response = HTMLResponse(
            fragment(state, base=base, csrf=csrf),
            headers={**_SECURITY_HEADERS, "Content-Security-Policy": "default-src 'none'"},
        )
        self._cookies(response, request, csrf)
        return response

    async def action(self, request: Request) -> Response:
        refused = await self.guard(request)
        if refused is not None:
            return refused
        if not _same_origin(request):
            return _forbidden("cross-site request refused")
        body = await _read_body(request)
        if body is None:
            return _forbidden("form too large")
        try:
            form = parse_qs(body.decode("utf-8", "replace"), max_num_fields=10)
        except ValueError:
            return _forbidden("not the page's form")
        given = (form.get("csrf") or [""])[0]
        expected = request.cookies.get(CSRF_COOKIE, "")
        if not expected or not _same(given, expected):
            return _forbidden("missing or wrong CSRF token: reload the page and try again")
        reporter = await asyncio.to_thread(self.reporter)
        if reporter is None:
            return _not_started()
        try:
            job_id = uuid.UUID(request.path_params["job_id"])
        except ValueError:
            return _not_found("no such job")
        state = await self.state(reporter)
        if not any(job.job_id == job_id for job, _, _ in state.jobs):
            return _not_found("no such job")
        action = request.path_params["action"]
        if action not in ("run", "stop"):
            return _not_found("no such action")
        do = request_run if action == "run" else request_stop
        try:
            said = await asyncio.to_thread(do, reporter, job_id)
        except Exception as exc:
            logger.warning("farm view: %s of job %s failed: %s", action, job_id, exc)
            return Response(
                f"could not {action} the job: {type(exc).__name__}".encode(),
                status_code=503,
                media_type="text/plain",
                headers=_SECURITY_HEADERS,
            )
        logger.info("farm view: job %s: %s", job_id, said)
        base = request.scope.get("root_path", "").rstrip("/")
        return RedirectResponse(
            f"{base}/?done={action}", status_code=303, headers=_SECURITY_HEADERS
        )


def _same(given: str, expected: str) -> bool:
    """Constant-time comparison of any two texts (non-ASCII too)."""
    return hmac.compare_digest(
        given.encode("utf-8", "replace"), expected.encode("utf-8", "replace")
    )


def _new_csrf() -> str:
    return secrets.token_urlsafe(32)


def _not_found(text: str) -> Response:
    return Response(
        text.encode(), status_code=404, media_type="text/plain", headers=_SECURITY_HEADERS
    )


def _forbidden(text: str) -> Response:
    return Response(
        text.encode(), status_code=403, media_type="text/plain", headers=_SECURITY_HEADERS
    )


def _not_started() -> Response:
    return Response(
        b"the event broker of this instance is not started yet",
        status_code=503,
        media_type="text/plain",
        headers=_SECURITY_HEADERS,
    )


async def _read_body(request: Request) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > _MAX_FORM:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def farm_app(
    services: Source,
    *,
    settings: FarmSettings | None = None,
    auth: Auth | None = None,
    private_events: Collection[uuid.UUID | str] = (),
    event_names: Mapping[uuid.UUID | str, str] | None = None,
) -> Starlette:
    """The farm view of one instance, to mount (``app.mount("/_eventbroker", farm_app(...))``).

    `services`: an `AppServices`, an `EventBrokerLifespan`, or a function returning the
    `AppServices` (None while not started). `settings`: default `FarmSettings.from_env()`.
    `auth`: your own check of a request (sync or async; True lets it in), besides the token.
    `private_events`: event ids whose params never show; `event_names`: names for event ids.
    """
    settings = settings if settings is not None else FarmSettings.from_env()
    farm = _Farm(
        services,
        settings,
        auth,
        [_uuid(e) for e in private_events],
        {_uuid(k): v for k, v in (event_names or {}).items()},
    )
    if not farm.enabled:
        logger.info(
            "the farm view is off (404): set EVENTBROKER_FARM_TOKEN or pass auth=... to farm_app()"
        )
    return Starlette(
        routes=[
            Route("/", farm.index, methods=["GET"]),
            Route("/fragment", farm.part, methods=["GET"]),
            Route("/jobs/{job_id}/{action:str}", farm.action, methods=["POST"]),
        ]
    )


def _uuid(value: uuid.UUID | str) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
