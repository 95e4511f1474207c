"""`listen`, `raise` and `instances`: a temporary broker that watches the topic or raises once."""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

from .._args import EventMissedEventArgs, EventReceivedEventArgs, MessageRefusedEventArgs
from .._broker import EventBroker
from .._presence import InstanceInfo
from .._transport import ConnectionState, PublishError
from ._common import (
    FAILED,
    OK,
    PASSIVE,
    UNREACHABLE,
    USAGE,
    CliError,
    Output,
    broker_options,
    clock_time,
    duration,
    new_broker,
    running,
    show_json,
    subscription_of,
    table,
    topic_of,
    utc,
)

CLI_RAISER_ID = uuid.UUID("e7e4b0c1-0000-4000-8000-00000000c11e")
"""The raiser id of `eventbroker raise` unless ``--raiser`` is given."""


def default_wait(environ: Mapping[str, str]) -> float:
    """A bit over one presence heartbeat interval of the app (its setting), so that every
    running instance is heard once; 10 s when the app sends no presence heartbeats."""
    interval = broker_options(environ).heartbeat_interval
    return interval + 5.0 if interval else 10.0


# -- listen ------------------------------------------------------------------------------------

_HINTS = {
    "unknown_key": ": its EVENTBROKER_SECRET differs from this one",
    "bad_signature": ": signed with another secret under the same key id, or altered",
    "replay_window": ": the sender's clock is off, or the message is old",
}


class _Listener:
    """Prints what the broker hears, from its dispatcher thread (in arrival order)."""

    def __init__(self, broker: EventBroker, out: Output, count: int | None) -> None:
        self.broker = broker
        self.out = out
        self.count = count
        self.events = 0
        self.refused = 0
        self.done = threading.Event()
        self._hosts: dict[str, str | None] = {}

    def _host(self, instance_id: str) -> str | None:
        if instance_id not in self._hosts:
            for info in self.broker.instances:
                self._hosts[info.instance_id] = info.host
            if len(self._hosts) > 10_000:
                self._hosts.clear()
        return self._hosts.get(instance_id)

    def on_event(self, args: EventReceivedEventArgs) -> None:
        now = time.time()
        lag = now - args.sent_at
        host = self._host(args.source_instance_id)
        record = {
            "type": "event",
            "event_id": str(args.event_id),
            "raiser_id": str(args.raiser_id),
            "param": args.param,
            "source_instance_id": args.source_instance_id,
            "source_host": host,
            "application_name": args.application_name,
            "site_id": args.site_id,
            "message_id": args.message_id,
            "sequence": args.sequence,
            "sent_at": args.sent_at,
            "received_at": now,
            "lag": round(lag, 6),
        }
        source = f"{host}/{args.source_instance_id[:8]}" if host else args.source_instance_id
        self.out.emit(
            record,
            f"{clock_time(now)} event {args.event_id} raiser {args.raiser_id} from {source} "
            f"#{args.sequence} lag {duration(lag)} param {show_json(args.param)}",
        )
        self.events += 1
        if self.count is not None and self.events >= self.count:
            self.done.set()

    def on_refused(self, args: MessageRefusedEventArgs) -> None:
        self.refused += 1
        sender = dict(args.sender)
        claimed = ", ".join(f"{k} {v!r}" for k, v in sorted(sender.items()))
        self.out.emit(
            {
                "type": "refused",
                "reason": args.reason,
                "description": args.description,
                "sender": sender,
                "received_at": args.received_at,
            },
            f"{clock_time(args.received_at)} REFUSED {args.reason}: {args.description}"
            + (f" (claims {claimed})" if claimed else "")
            + _HINTS.get(args.reason, ""),
        )

    def on_missed(self, args: EventMissedEventArgs) -> None:
        now = time.time()
        where = (
            f" from {args.source_instance_id}, sequence {args.first_sequence}..{args.last_sequence}"
            if args.source_instance_id
            else ""
        )
        self.out.emit(
            {
                "type": "missed",
                "reason": args.reason.value,
                "source_instance_id": args.source_instance_id,
                "first_sequence": args.first_sequence,
                "last_sequence": args.last_sequence,
                "at": now,
            },
            f"{clock_time(now)} MISSED {args.reason.value}{where}: events may have been lost",
        )

    def on_connection(self, state: ConnectionState) -> None:
        if state is ConnectionState.CONNECTED:
            return  # the "listening" line says it
        now = time.time()
        error = getattr(self.broker.transport, "last_error", "") or ""
        self.out.emit(
            {"type": "connection", "state": state.value, "at": now, "last_error": error},
            f"{clock_time(now)} connection {state.value}" + (f" ({error})" if error else ""),
        )


def listen(args: argparse.Namespace, environ: Mapping[str, str], out: Output) -> int:
    broker = new_broker(environ, **PASSIVE)
    listener = _Listener(broker, out, args.count)
    broker.event_received.subscribe(listener.on_event)
    broker.message_refused.subscribe(listener.on_refused)
    broker.event_missed.subscribe(listener.on_missed)
    broker.connection_changed.subscribe(listener.on_connection)
    timed_out = False
    with running(broker, args.connect_timeout):
        subscription = subscription_of(broker)
        out.emit(
            {
                "type": "listening",
                "topic": topic_of(broker),
                "subscription": subscription,
                "application_name": broker.options.application_name,
                "instance_id": broker.instance_id,
            },
            f"listening to {broker.options.application_name!r} on topic {topic_of(broker)!r} "
            f"(temporary subscription {subscription}); Ctrl-C to stop",
        )
        deadline = None if args.timeout is None else time.monotonic() + args.timeout
        try:
            while not listener.done.is_set() and not out.closed.is_set():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    timed_out = True
                    break
                listener.done.wait(0.2 if left is None else min(0.2, left))
        except KeyboardInterrupt:
            pass  # Ctrl-C or SIGTERM: the normal end of a listen
    out.emit(
        {"type": "stopped", "events": listener.events, "refused": listener.refused},
        f"stopped: {listener.events} events, {listener.refused} refused",
    )
    return FAILED if timed_out and args.count is not None else OK


# -- raise -------------------------------------------------------------------------------------


def _json_param(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise CliError(
            f'--param is not JSON ({exc}): quote it, e.g. --param \'{{"sku": "A-1"}}\''
        ) from None


def raise_event(args: argparse.Namespace, environ: Mapping[str, str], out: Output) -> int:
    param = _json_param(args.param)
    broker = new_broker(environ)
    with running(broker, args.connect_timeout):
        try:
            message_id = broker.raise_event(args.event_id, args.raiser, param)
        except (TypeError, ValueError) as exc:
            raise CliError(f"cannot raise this event: {exc}") from None
        except PublishError as exc:
            raise CliError(f"not sent: {exc}", UNREACHABLE) from None
        deadline = time.monotonic() + args.timeout
        while getattr(broker.transport, "queued", 0):  # sent once the queue is empty
            if time.monotonic() >= deadline:
                error = getattr(broker.transport, "last_error", "") or "no answer"
                raise CliError(
                    f"event {args.event_id} not sent within {args.timeout:g} s ({error})",
                    UNREACHABLE,
                )
            time.sleep(0.01)
    out.emit(
        {
            "type": "raised",
            "event_id": str(args.event_id),
            "raiser_id": str(args.raiser),
            "param": param,
            "message_id": message_id,
            "instance_id": broker.instance_id,
            "topic": topic_of(broker),
        },
        f"raised event {args.event_id} (raiser {args.raiser}, message {message_id}) on topic "
        f"{topic_of(broker)!r}",
    )
    return OK


# -- instances ---------------------------------------------------------------------------------


def _instance_record(info: InstanceInfo, now: float) -> dict[str, Any]:
    return {
        "type": "instance",
        "instance_id": info.instance_id,
        "application_name": info.application_name,
        "site_id": info.site_id,
        "host": info.host,
        "started_at": info.started_at,
        "last_seen": info.last_seen,
        "last_seen_ago": round(now - info.last_seen, 3),
        "last_sequence": info.last_sequence,
        "heartbeat_interval": info.heartbeat_interval,
        "heartbeat_lag": None if info.heartbeat_lag is None else round(info.heartbeat_lag, 6),
    }


def instances(args: argparse.Namespace, environ: Mapping[str, str], out: Output) -> int:
    wait = default_wait(environ) if args.wait is None else args.wait
    if wait < 0:
        raise CliError(f"--wait must be 0 or more seconds, got {wait:g}", USAGE)
    broker = new_broker(environ, **PASSIVE)
    interrupted = False
    with running(broker, args.connect_timeout):
        out.progress(f"listening for heartbeats for {wait:g} s (--wait)...")
        try:
            time.sleep(wait)
        except KeyboardInterrupt:
            interrupted = True
        heard = broker.instances
        application = broker.options.application_name
    now = time.time()
    if out.json:
        for info in heard:
            out.emit(_instance_record(info, now), "")
    else:
        rows = [
            [
                info.host or "?",
                info.instance_id,
                info.site_id or "-",
                utc(info.started_at),
                f"{duration(now - info.last_seen)} ago",
                "-" if info.last_sequence is None else str(info.last_sequence),
                duration(info.heartbeat_lag),
            ]
            for info in heard
        ]
        if rows:
            headers = ["HOST", "INSTANCE", "SITE", "STARTED", "LAST SEEN", "LAST SEQ", "LAG"]
            for line in table(headers, rows):
                out.text(line)
        out.text(
            f"{len(heard)} instance(s) of {application!r} heard in "
            f"{'(interrupted) ' if interrupted else ''}{wait:g} s"
        )
    return OK if heard else FAILED
