"""The administration endpoint of the loopback Service Bus broker: Service Bus' ATOM/XML
management API over plain HTTP, enough for ``ServiceBusAdministrationClient`` to create, get,
update, delete and list queues, topics and subscriptions."""

from __future__ import annotations

import contextlib
import datetime
import logging
import re
import socket
import threading
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape

import attrs

from ._servicebus_rules import Rule, RuleError, parse_rule
from ._servicebus_state import (
    FOREVER,
    MAX_NAME_LENGTH,
    MIN_AUTO_DELETE_ON_IDLE,
    BrokerState,
    Entity,
    EntityProperties,
    Topic,
)

if TYPE_CHECKING:
    from .servicebus_broker import LoopbackServiceBus

__all__ = ["AdminServer"]

_log = logging.getLogger(__name__)

_ATOM = "http://www.w3.org/2005/Atom"
_SB = "http://schemas.microsoft.com/netservices/2010/10/servicebus/connect"
_SB_COUNTS = "http://schemas.microsoft.com/netservices/2011/06/servicebus"
_XSI = "http://www.w3.org/2001/XMLSchema-instance"
_MAX_LOCK_DURATION = 300.0
_FOREVER_TEXT = "P10675199DT2H48M5.4775807S"  # TimeSpan.MaxValue, as Service Bus writes it
_DURATION = re.compile(
    r"^P(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)


class _HttpError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _duration_text(seconds: float) -> str:
    if seconds >= FOREVER:
        return _FOREVER_TEXT
    return f"PT{seconds:g}S"


def _parse_duration(text: str) -> float:
    match = _DURATION.match(text.strip())
    if not match:
        raise _HttpError(400, f"invalid ISO 8601 duration {text!r} (example: PT5M)")
    parts = {k: float(v) if v else 0.0 for k, v in match.groupdict().items()}
    seconds = parts["d"] * 86400 + parts["h"] * 3600 + parts["m"] * 60 + parts["s"]
    return min(seconds, FOREVER)


def _iso(moment: float) -> str:
    return (
        datetime.datetime.fromtimestamp(moment, datetime.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def _description_fields(body: bytes, kind: str) -> dict[str, str]:
    """The child elements (local name -> text) of the ``<kind>Description`` in an ATOM entry."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise _HttpError(400, f"the request body is not XML: {exc}") from None
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] == f"{kind}Description":
            return {child.tag.rsplit("}", 1)[-1]: (child.text or "") for child in element}
    raise _HttpError(400, f"the request body has no {kind}Description element")


def _properties_from(fields: dict[str, str], defaults: EntityProperties) -> EntityProperties:
    values: dict[str, Any] = {}
    for xml_name, name in (
        ("LockDuration", "lock_duration"),
        ("DefaultMessageTimeToLive", "default_message_time_to_live"),
        ("AutoDeleteOnIdle", "auto_delete_on_idle"),
    ):
        if fields.get(xml_name):
            values[name] = _parse_duration(fields[xml_name])
    if fields.get("MaxDeliveryCount"):
        values["max_delivery_count"] = int(fields["MaxDeliveryCount"])
    for xml_name, name in (
        ("DeadLetteringOnMessageExpiration", "dead_lettering_on_message_expiration"),
        ("RequiresSession", "requires_session"),
    ):
        if fields.get(xml_name):
            values[name] = fields[xml_name].strip().lower() == "true"
    try:
        props = attrs.evolve(defaults, **values)
    except ValueError as exc:
        raise _HttpError(400, str(exc)) from None
    if props.lock_duration > _MAX_LOCK_DURATION:
        raise _HttpError(
            400, f"LockDuration is at most PT5M, got {_duration_text(props.lock_duration)}"
        )
    if props.auto_delete_on_idle < MIN_AUTO_DELETE_ON_IDLE:
        raise _HttpError(
            400,
            f"AutoDeleteOnIdle is at least PT5M, got {_duration_text(props.auto_delete_on_idle)}",
        )
    return props


def _counts(target: Entity | Topic) -> str:
    entity = target if isinstance(target, Entity) else None
    active = len(entity.messages) if entity is not None else 0
    dead = 0
    if entity is not None and entity.dead_letter is not None:
        dead = len(entity.dead_letter.messages)
    scheduled = len(target.scheduled)
    return (
        f'<CountDetails xmlns:d2p1="{_SB_COUNTS}">'
        f"<d2p1:ActiveMessageCount>{active}</d2p1:ActiveMessageCount>"
        f"<d2p1:DeadLetterMessageCount>{dead}</d2p1:DeadLetterMessageCount>"
        f"<d2p1:ScheduledMessageCount>{scheduled}</d2p1:ScheduledMessageCount>"
        "<d2p1:TransferMessageCount>0</d2p1:TransferMessageCount>"
        "<d2p1:TransferDeadLetterMessageCount>0</d2p1:TransferDeadLetterMessageCount>"
        "</CountDetails>"
    )


def _common(props: EntityProperties, created: float, accessed: float) -> str:
    stamp = _iso(created)
    return (
        f"<DefaultMessageTimeToLive>{_duration_text(props.default_message_time_to_live)}"
        "</DefaultMessageTimeToLive>"
        f"<CreatedAt>{stamp}</CreatedAt><UpdatedAt>{stamp}</UpdatedAt>"
        f"<AccessedAt>{_iso(accessed)}</AccessedAt>"
        f"<AutoDeleteOnIdle>{_duration_text(props.auto_delete_on_idle)}</AutoDeleteOnIdle>"
        "<Status>Active</Status><EntityAvailabilityStatus>Available</EntityAvailabilityStatus>"
        "<EnableBatchedOperations>true</EnableBatchedOperations>"
    )


def _update(target: Entity | Topic, props: EntityProperties, what: str) -> None:
    """Apply an update (``If-Match`` PUT); RequiresSession cannot change, as on Service Bus."""
    if props.requires_session != target.properties.requires_session:
        raise _HttpError(
            400, f"RequiresSession cannot be changed on an existing {what}: delete and recreate it"
        )
    target.properties = props


def _description(kind: str, target: Entity | Topic) -> str:
    if isinstance(target, Topic):
        size = sum(len(s.messages) for s in target.subscriptions.values())
        inner = (
            _common(target.properties, target.created_at, target.created_at)
            + "<MaxSizeInMegabytes>1024</MaxSizeInMegabytes>"
            + "<RequiresDuplicateDetection>false</RequiresDuplicateDetection>"
            + "<DuplicateDetectionHistoryTimeWindow>PT10M</DuplicateDetectionHistoryTimeWindow>"
            + f"<SizeInBytes>{size}</SizeInBytes>"
            + "<SupportOrdering>true</SupportOrdering>"
            + _counts(target)
            + f"<SubscriptionCount>{len(target.subscriptions)}</SubscriptionCount>"
            + "<EnablePartitioning>false</EnablePartitioning>"
            + "<MaxMessageSizeInKilobytes>256</MaxMessageSizeInKilobytes>"
        )
    else:
        props = target.properties
        inner = (
            _common(props, target.created_at, target.last_activity)  # receives, sends, settles
            + f"<LockDuration>{_duration_text(props.lock_duration)}</LockDuration>"
            + "<RequiresSession>"
            + ("true" if props.requires_session else "false")
            + "</RequiresSession>"
            + "<DeadLetteringOnMessageExpiration>"
            + ("true" if props.dead_lettering_on_message_expiration else "false")
            + "</DeadLetteringOnMessageExpiration>"
            + f"<MaxDeliveryCount>{props.max_delivery_count}</MaxDeliveryCount>"
            + f"<MessageCount>{len(target.messages)}</MessageCount>"
            + _counts(target)
        )
        if kind == "Subscription":
            inner += "<DeadLetteringOnFilterEvaluationExceptions>true</DeadLetteringOnFilterEvaluationExceptions>"
        else:
            inner += (
                "<MaxSizeInMegabytes>1024</MaxSizeInMegabytes>"
                "<RequiresDuplicateDetection>false</RequiresDuplicateDetection>"
                f"<SizeInBytes>{len(target.messages)}</SizeInBytes>"
                "<EnablePartitioning>false</EnablePartitioning>"
                "<MaxMessageSizeInKilobytes>256</MaxMessageSizeInKilobytes>"
            )
    return f'<{kind}Description xmlns="{_SB}" xmlns:i="{_XSI}">{inner}</{kind}Description>'


def _entry(base: str, path: str, title: str, kind: str, target: Entity | Topic) -> str:
    return _atom_entry(base, path, title, target.created_at, _description(kind, target))


def _atom_entry(base: str, path: str, title: str, created: float, content: str) -> str:
    url = escape(f"{base}/{path}?api-version=2021-05")
    return (
        f'<entry xmlns="{_ATOM}"><id>{url}</id><title type="text">{escape(title)}</title>'
        f"<published>{_iso(created)}</published><updated>{_iso(created)}</updated>"
        f'<link rel="self" href="{url}"/>'
        f'<content type="application/xml">{content}</content></entry>'
    )


def _rule_entry(base: str, path: str, rule: Rule, created: float) -> str:
    content = (
        f'<RuleDescription xmlns="{_SB}" xmlns:i="{_XSI}" xmlns:xsi="{_XSI}">'
        f"{rule.description_xml}<CreatedAt>{_iso(created)}</CreatedAt></RuleDescription>"
    )
    return _atom_entry(base, path, rule.name, created, content)


def _feed(base: str, path: str, entries: list[str], skip: int, top: int, total: int) -> str:
    links = f'<link rel="self" href="{escape(f"{base}/{path}?$skip={skip}&$top={top}")}"/>'
    if skip + top < total:
        links += (
            f'<link rel="next" href="{escape(f"{base}/{path}?$skip={skip + top}&$top={top}")}"/>'
        )
    return (
        f'<feed xmlns="{_ATOM}"><title type="text">{escape(path)}</title>'
        f"<id>{escape(f'{base}/{path}')}</id><updated>{_iso(0)}</updated>{links}"
        + "".join(entries)
        + "</feed>"
    )


class _Api:
    """Maps the management REST calls onto the broker state (runs on the reactor thread)."""

    def __init__(self, base: str) -> None:
        self.base = base

    def handle(
        self,
        state: BrokerState,
        method: str,
        path: str,
        query: dict[str, str],
        body: bytes,
        if_match: bool,
    ) -> tuple[int, str]:
        parts = [unquote(p) for p in path.strip("/").split("/") if p]
        if (
            len(parts) in (4, 5)
            and parts[1].lower() == "subscriptions"
            and parts[3].lower() == "rules"
        ):
            return self._rules(state, method, parts, query, body, if_match)
        if len(parts) == 2 and parts[0] == "$Resources":
            return self._list_entities(state, parts[1].lower(), query)
        if len(parts) == 2 and parts[1].lower() == "subscriptions" and method == "GET":
            return self._list_subscriptions(state, parts[0], query)
        if len(parts) == 3 and parts[1].lower() == "subscriptions":
            return self._subscription(state, method, parts[0], parts[2], body, if_match)
        if len(parts) == 1:
            return self._entity(state, method, parts[0], body, if_match)
        raise _HttpError(404, f"the loopback broker does not serve {method} /{path}")

    def _page(self, query: dict[str, str]) -> tuple[int, int]:
        return int(query.get("$skip", 0)), int(query.get("$top", 100))

    def _list_entities(
        self, state: BrokerState, kind: str, query: dict[str, str]
    ) -> tuple[int, str]:
        skip, top = self._page(query)
        items: list[tuple[str, str, Topic | Entity]]
        if kind == "topics":
            items = [(t.name, "Topic", t) for t in state.topics.values()]
        elif kind == "queues":
            items = [(q.path, "Queue", q) for q in state.queues.values()]
        else:
            raise _HttpError(404, f"unknown resource collection {kind!r}")
        entries = [
            _entry(self.base, name, name, kind_name, target)
            for name, kind_name, target in items[skip : skip + top]
        ]
        return 200, _feed(self.base, f"$Resources/{kind}", entries, skip, top, len(items))

    def _list_subscriptions(
        self, state: BrokerState, topic_name: str, query: dict[str, str]
    ) -> tuple[int, str]:
        topic = self._topic(state, topic_name)
        skip, top = self._page(query)
        subs = list(topic.subscriptions.values())
        entries = []
        for sub in subs[skip : skip + top]:
            name = sub.path.rsplit("/", 1)[1]
            entries.append(
                _entry(self.base, f"{topic.name}/subscriptions/{name}", name, "Subscription", sub)
            )
        return 200, _feed(self.base, f"{topic.name}/subscriptions", entries, skip, top, len(subs))

    @staticmethod
    def _topic(state: BrokerState, name: str) -> Topic:
        topic = state.topics.get(name.lower())
        if topic is None:
            raise _HttpError(404, f"topic {name!r} does not exist")
        return topic

    def _subscription(
        self,
        state: BrokerState,
        method: str,
        topic_name: str,
        name: str,
        body: bytes,
        if_match: bool,
    ) -> tuple[int, str]:
        topic = self._topic(state, topic_name)
        sub = topic.subscriptions.get(name.lower())
        path = f"{topic.name}/subscriptions/{name}"
        if method == "GET":
            if sub is None:
                raise _HttpError(
                    404, f"subscription {name!r} of topic {topic.name!r} does not exist"
                )
            return 200, _entry(self.base, path, name, "Subscription", sub)
        if method == "DELETE":
            if sub is None:
                raise _HttpError(
                    404, f"subscription {name!r} of topic {topic.name!r} does not exist"
                )
            state.delete_subscription(topic.name, name)
            return 200, ""
        if method == "PUT":
            if len(name) > MAX_NAME_LENGTH:
                raise _HttpError(
                    400, f"subscription name {name!r} is longer than {MAX_NAME_LENGTH}"
                )
            props = _properties_from(_description_fields(body, "Subscription"), state.defaults)
            if sub is not None:
                if not if_match:
                    raise _HttpError(
                        409, f"subscription {name!r} of topic {topic.name!r} already exists"
                    )
                _update(sub, props, "subscription")
                return 200, _entry(self.base, path, name, "Subscription", sub)
            if if_match:
                raise _HttpError(
                    404, f"subscription {name!r} of topic {topic.name!r} does not exist"
                )
            sub = state.create_subscription(topic.name, name, props)
            return 201, _entry(self.base, path, name, "Subscription", sub)
        raise _HttpError(405, f"{method} is not allowed on a subscription")

    def _rules(
        self,
        state: BrokerState,
        method: str,
        parts: list[str],
        query: dict[str, str],
        body: bytes,
        if_match: bool,
    ) -> tuple[int, str]:
        topic = self._topic(state, parts[0])
        sub = topic.subscriptions.get(parts[2].lower())
        if sub is None:
            raise _HttpError(
                404, f"subscription {parts[2]!r} of topic {topic.name!r} does not exist"
            )
        base_path = f"{topic.name}/subscriptions/{parts[2]}/rules"
        if len(parts) == 4:
            if method != "GET":
                raise _HttpError(405, f"{method} is not allowed on a rule collection")
            skip, top = self._page(query)
            rules = list(sub.rules.values())
            entries = [
                _rule_entry(self.base, f"{base_path}/{r.name}", r, sub.created_at)
                for r in rules[skip : skip + top]
            ]
            return 200, _feed(self.base, base_path, entries, skip, top, len(rules))
        name = parts[4]
        key = name.lower()
        existing = sub.rules.get(key)
        path = f"{base_path}/{name}"
        if method == "GET":
            if existing is None:
                raise _HttpError(404, f"rule {name!r} of subscription {sub.path!r} does not exist")
            return 200, _rule_entry(self.base, path, existing, sub.created_at)
        if method == "DELETE":
            if existing is None:
                raise _HttpError(404, f"rule {name!r} of subscription {sub.path!r} does not exist")
            del sub.rules[key]
            return 200, ""
        if method == "PUT":
            if existing is not None and not if_match:
                raise _HttpError(409, f"rule {name!r} of subscription {sub.path!r} already exists")
            if existing is None and if_match:
                raise _HttpError(404, f"rule {name!r} of subscription {sub.path!r} does not exist")
            try:
                rule = parse_rule(name, body)
            except RuleError as exc:
                raise _HttpError(400, str(exc)) from None
            sub.rules[key] = rule
            return (200 if existing else 201), _rule_entry(self.base, path, rule, sub.created_at)
        raise _HttpError(405, f"{method} is not allowed on a rule")

    def _entity(
        self, state: BrokerState, method: str, name: str, body: bytes, if_match: bool
    ) -> tuple[int, str]:
        existing = state.resolve(name)
        kind = "Topic" if isinstance(existing, Topic) else "Queue"
        if method == "GET":
            if existing is None:
                raise _HttpError(404, f"entity {name!r} does not exist")
            return 200, _entry(self.base, name, name, kind, existing)
        if method == "DELETE":
            if existing is None:
                raise _HttpError(404, f"entity {name!r} does not exist")
            if isinstance(existing, Topic):
                state.delete_topic(name)
            else:
                state.delete_queue(name)
            return 200, ""
        if method == "PUT":
            kind = "Topic" if b"TopicDescription" in body else "Queue"
            props = _properties_from(_description_fields(body, kind), state.defaults)
            if existing is not None:
                if not if_match:
                    raise _HttpError(409, f"entity {name!r} already exists")
                _update(existing, props, kind.lower())
                return 200, _entry(self.base, name, name, kind, existing)
            if if_match:
                raise _HttpError(404, f"entity {name!r} does not exist")
            created: Topic | Entity = (
                state.create_topic(name, props)
                if kind == "Topic"
                else state.create_queue(name, props)
            )
            return 201, _entry(self.base, name, name, kind, created)
        raise _HttpError(405, f"{method} is not allowed on an entity")


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("admin %s " + format, self.address_string(), *args)

    def _serve(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if_match = bool(self.headers.get("If-Match"))
        broker = self.server.broker
        api = self.server.api
        try:
            refused = broker._check_token(self.headers.get("Authorization") or "")
            if refused is not None:
                raise _HttpError(401, refused)
            status, text = broker._with_state(
                lambda state: api.handle(state, self.command, url.path, query, body, if_match)
            )
        except _HttpError as exc:
            status = exc.status
            text = f"<Error><Code>{exc.status}</Code><Detail>{escape(exc.detail)}</Detail></Error>"
        except Exception as exc:
            _log.exception("admin request %s %s failed", self.command, self.path)
            status = 500
            text = f"<Error><Code>500</Code><Detail>{escape(repr(exc))}</Detail></Error>"
        payload = (('<?xml version="1.0" encoding="utf-8"?>' + text) if text else "").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/atom+xml;type=entry;charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_PUT = do_DELETE = _serve


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], broker: LoopbackServiceBus) -> None:
        super().__init__(address, _Handler)
        self.broker = broker
        self.api = _Api(f"https://{address[0]}:{self.server_address[1]}")
        self.open_requests: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self.open_requests.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self.open_requests.discard(request)
        super().shutdown_request(request)

    def close_open_requests(self) -> None:
        """Close every kept-alive client connection, as a stopped server's would be."""
        with self._open_lock:
            requests, self.open_requests = self.open_requests, set()
        for request in requests:
            with contextlib.suppress(OSError):
                request.shutdown(socket.SHUT_RDWR)


class AdminServer:
    """The HTTP administration endpoint, served from its own thread."""

    def __init__(self, broker: LoopbackServiceBus, host: str, port: int) -> None:
        self._server = _Server((host, port), broker)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name=f"loopback-servicebus-admin:{self.port}",
            daemon=True,
        )
        self._thread.start()

    def close(self) -> None:
        """Stop serving, close the listening socket and every kept-alive connection."""
        self._server.shutdown()
        self._server.server_close()
        self._server.close_open_requests()
        self._thread.join(timeout=5)
