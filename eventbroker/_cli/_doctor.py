"""`eventbroker doctor`: check the settings, the network, the credentials and rights, a signed
round trip through the topic, and that the other instances share the secret; say the fix."""

from __future__ import annotations

import argparse
import contextlib
import socket
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import attrs

from .._args import MessageRefusedEventArgs
from .._broker import EventBroker
from .._envelope import normalize_keys
from .._transport import ConnectionState
from ._common import (
    FAILED,
    OK,
    PASSIVE,
    SB,
    CliError,
    Output,
    admin,
    broker_options,
    describe,
    duration,
    new_broker,
    servicebus_options,
    subscription_of,
)
from ._watch import default_wait

if TYPE_CHECKING:
    from azure.servicebus.management import ServiceBusAdministrationClient

    from .._options import EventBrokerOptions
    from ..servicebus import ServiceBusOptions

_TCP_TIMEOUT = 5.0
_ROUND_TRIP_TIMEOUT = 15.0
_MISMATCH = ("unknown_key", "bad_signature")
_RIGHTS = ("manage", "send", "listen")
_CAUSE_FIXES = {
    "replay_window": "clocks differ by more than EVENTBROKER_REPLAY_WINDOW: synchronise the "
    "hosts' clocks (NTP)",
    "unknown_version": "an instance runs another release of the library: finish the deployment "
    "(events still flow; heartbeats of the newer release are refused by the older one)",
    "malformed": "something other than this library publishes to the topic: give the app a "
    "topic of its own (EVENTBROKER_SERVICEBUS_TOPIC)",
    "oversize": "an instance sends envelopes over EVENTBROKER_MAX_MESSAGE_BYTES: give every "
    "instance the same limit",
}


@attrs.frozen
class Check:
    name: str
    status: str
    """OK, FAIL or SKIP."""
    detail: str
    fix: str | None = None


class _Report:
    def __init__(self, out: Output) -> None:
        self.out = out
        self.checks: list[Check] = []

    def add(self, name: str, status: str, detail: str, fix: str | None = None) -> bool:
        check = Check(name, status, detail, fix)
        self.checks.append(check)
        text = f"{status:4}  {name:13}  {detail}"
        if fix:
            text += f"\n{'':20}fix: {fix}"
        self.out.emit({"type": "check", **attrs.asdict(check)}, text)
        return status != "FAIL"

    def skip(self, names: list[str], because: str) -> None:
        for name in names:
            self.add(name, "SKIP", f"not checked: {because}")

    @property
    def failed(self) -> list[str]:
        return [c.name for c in self.checks if c.status == "FAIL"]


# -- what a refusal by Service Bus means ---------------------------------------------------------


def _missing_right(text: str) -> str | None:
    """The right a Service Bus refusal names ("'Send' claim(s) are required..."), if any."""
    lowered = text.lower()
    if "claim" not in lowered:
        return None
    for right in _RIGHTS:
        if right in lowered:
            return right
    return "manage"


def _right_fix(right: str) -> str:
    return (
        f"the key or identity lacks the {right.capitalize()} right: use a shared access policy "
        "with Manage, Send and Listen (the app creates its subscription at start, which needs "
        "Manage), or give the identity the 'Azure Service Bus Data Owner' role on the namespace"
    )


def _credentials_fix(options: ServiceBusOptions) -> str:
    if options.connection_string is not None:
        return (
            f"copy the connection string again from the namespace's 'Shared access policies' "
            f"into {SB}CONNECTION_STRING: its SharedAccessKeyName and SharedAccessKey must be a "
            "policy's name and one of its keys"
        )
    return (
        "check the identity DefaultAzureCredential finds (managed identity on, AZURE_CLIENT_ID "
        "for a user-assigned one) and its role assignment on the namespace"
    )


# -- checks ------------------------------------------------------------------------------------


def _configuration(
    report: _Report, environ: Mapping[str, str]
) -> tuple[EventBrokerOptions, ServiceBusOptions] | None:
    try:
        options = broker_options(environ)
        sb = servicebus_options(environ)
    except CliError as exc:
        report.add(
            "configuration",
            "FAIL",
            str(exc),
            "set the variable named above as the app has it (docs/cli.md lists the settings)",
        )
        return None
    keys = list(normalize_keys(options.secret))
    info = sb.connection_info
    where = info.host if info is not None else sb.fully_qualified_namespace
    auth = (
        "a shared access key from the connection string"
        if sb.connection_string is not None
        else "DefaultAzureCredential"
    )
    report.add(
        "configuration",
        "OK",
        f"application {options.application_name!r}, topic {sb.topic!r} on {where}, {auth}; "
        f"{len(keys)} secret(s), signing key id {keys[0]!r}",
    )
    return options, sb


def _endpoints(options: ServiceBusOptions) -> list[tuple[str, str, int]]:
    """(what, host, port) of the AMQP and the administration endpoints."""
    info = options.connection_info
    emulator = info.development_emulator if info is not None else options.use_development_emulator
    host = info.host if info is not None else (options.fully_qualified_namespace or "")
    amqp = urlsplit(f"//{host}")
    found = [("AMQP", amqp.hostname or host, amqp.port or (5672 if emulator else 5671))]
    if options.administration_endpoint:
        parts = urlsplit(options.administration_endpoint)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        found.append(("administration", parts.hostname or "", port))
    else:
        found.append(("administration", amqp.hostname or host, 443))
    return found


def _reachable(report: _Report, options: ServiceBusOptions) -> bool:
    failures, reached = [], []
    for what, host, port in _endpoints(options):
        try:
            with socket.create_connection((host, port), timeout=_TCP_TIMEOUT):
                reached.append(f"{what} {host}:{port}")
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            failures.append(f"{what} endpoint {host}:{port}: {reason}")
    if failures:
        where = (
            f"the Endpoint in {SB}CONNECTION_STRING"
            if options.connection_string is not None
            else f"{SB}FULLY_QUALIFIED_NAMESPACE"
        )
        return report.add(
            "reachable",
            "FAIL",
            "cannot connect to " + "; ".join(failures),
            f"check the namespace name in {where} (and {SB}ADMINISTRATION_ENDPOINT if set), "
            "DNS, and that outbound TCP 5671 (AMQP) and 443 (HTTPS) are open",
        )
    return report.add("reachable", "OK", "connected to " + ", ".join(reached))


def _manage(
    report: _Report, client: ServiceBusAdministrationClient, options: ServiceBusOptions
) -> bool:
    from azure.core.exceptions import ResourceNotFoundError

    try:
        topic = client.get_topic(options.topic)
    except ResourceNotFoundError:
        report.add("credentials", "OK", "accepted by the administration endpoint")
        if options.create_missing_topic:
            return report.add(
                "manage",
                "OK",
                f"topic {options.topic!r} does not exist yet: the first instance creates it "
                "(Manage right)",
            )
        return report.add(
            "manage",
            "FAIL",
            f"topic {options.topic!r} does not exist and {SB}CREATE_MISSING_TOPIC is false",
            f"create the topic, or set {SB}CREATE_MISSING_TOPIC=true (needs Manage), or fix "
            f"{SB}TOPIC",
        )
    except Exception as exc:
        text = describe(exc, options)
        right = _missing_right(text)
        if right is not None:
            report.add("credentials", "OK", "accepted (the refusal names a missing right)")
            return report.add("manage", "FAIL", text, _right_fix(right))
        report.add("credentials", "FAIL", text, _credentials_fix(options))
        report.skip(["manage"], "the credentials were refused")
        return False
    report.add("credentials", "OK", "accepted by the administration endpoint")
    count = getattr(topic, "subscription_count", None)
    return report.add(
        "manage",
        "OK",
        f"read topic {options.topic!r}"
        + (f" ({count} subscriptions)" if isinstance(count, int) else "")
        + "; the app may create its subscription",
    )


def _start_probe(broker: EventBroker, timeout: float) -> str | None:
    """Start a probe broker; None when connected, else why not (no secret)."""
    try:
        broker.start()
    except Exception as exc:
        options = getattr(broker.transport, "options", None)
        return str(exc) if options is None else describe(exc, options)
    deadline = time.monotonic() + timeout
    while broker.connection_state is not ConnectionState.CONNECTED:
        if time.monotonic() >= deadline:
            error = getattr(broker.transport, "last_error", "") or "no answer"
            return f"not connected within {timeout:g} s: {error}"
        time.sleep(0.02)
    return None


def _probe_failed(
    report: _Report, name: str, why: str, options: ServiceBusOptions, later: list[str]
) -> None:
    right = _missing_right(why)
    if right is not None:
        fix = _right_fix(right)
    elif "refused the credentials" in why or "InvalidSignature" in why:
        fix = _credentials_fix(options)
    else:
        fix = (
            "Service Bus is reachable but the AMQP connection failed: see the error; "
            "`eventbroker doctor -vv` shows the SDK's log"
        )
    report.add(name, "FAIL", why, fix)
    report.skip(later, f"{name} failed")


def _wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def _secret_check(
    report: _Report,
    refusals: list[MessageRefusedEventArgs],
    heard: list[str],
    application: str,
    wait: float,
) -> None:
    mismatched = [r for r in refusals if r.reason in _MISMATCH]
    if mismatched:
        senders: dict[str, str] = {}
        anonymous = 0
        for refusal in mismatched:
            sender = refusal.sender
            instance = sender.get("instance_id")
            if instance is None:
                anonymous += 1
                continue
            senders[instance] = f"instance {instance} on host {sender.get('host', '?')!r}" + (
                f" (key id {sender['key_id']!r})" if "key_id" in sender else ""
            )
        parts = list(senders.values())[:5]
        if anonymous:
            parts.append(
                f"{anonymous} message(s) signed with a key id this configuration has but a different secret"
            )
        report.add(
            "secret",
            "FAIL",
            f"{len(mismatched)} message(s) from other instances do not verify with this "
            "secret: " + "; ".join(parts),
            "EVENTBROKER_SECRET differs between instances: give every instance (and this shell) "
            "the same secret; during a rotation every instance lists the new and the old one, "
            "comma-separated (docs/eventbroker.md)",
        )
    elif heard:
        report.add(
            "secret",
            "OK",
            f"{len(heard)} other instance(s) of {application!r} heard, every message verified: "
            + ", ".join(heard[:5])
            + (" ..." if len(heard) > 5 else ""),
        )
    else:
        report.add(
            "secret",
            "SKIP",
            f"no other instance of {application!r} heard in {wait:g} s (none running, presence "
            "heartbeats off, or another EVENTBROKER_APPLICATION_NAME)",
        )
    other = Counter(r.reason for r in refusals if r.reason not in _MISMATCH)
    if not other:
        report.add("refusals", "OK", "no other message refused")
        return
    fixes = [_CAUSE_FIXES[c] for c in sorted(other) if c in _CAUSE_FIXES]
    report.add(
        "refusals",
        "FAIL",
        "refused " + ", ".join(f"{count} {cause}" for cause, count in sorted(other.items())),
        "; ".join(fixes) or "watch them with `eventbroker listen`",
    )


def _cleanup(
    report: _Report,
    client: ServiceBusAdministrationClient,
    options: ServiceBusOptions,
    names: list[str],
) -> None:
    from azure.core.exceptions import ResourceNotFoundError

    left = []
    for name in names:
        try:
            client.get_subscription(options.topic, name)
        except ResourceNotFoundError:
            continue
        except Exception as exc:
            report.add(
                "cleanup", "FAIL", f"cannot check subscription {name!r}: {describe(exc, options)}"
            )
            return
        left.append(name)
    if left:
        report.add(
            "cleanup",
            "FAIL",
            f"temporary subscription(s) {', '.join(left)} not deleted at stop",
            "they go after 5 idle minutes (AutoDeleteOnIdle); deleting needs Manage; "
            "`eventbroker subscriptions prune` removes idle ones",
        )
    else:
        report.add("cleanup", "OK", "the temporary subscriptions were deleted at stop")


def doctor(args: argparse.Namespace, environ: Mapping[str, str], out: Output) -> int:
    report = _Report(out)
    later = [
        "reachable",
        "credentials",
        "manage",
        "listen",
        "send",
        "round_trip",
        "secret",
        "refusals",
        "cleanup",
    ]
    loaded = _configuration(report, environ)
    if loaded is None:
        report.skip(later, "the configuration does not load")
        return _summary(report)
    options, sb = loaded
    if not _reachable(report, sb):
        report.skip(later[1:], "Service Bus cannot be reached")
        return _summary(report)
    client = admin(sb)
    try:
        if not _manage(report, client, sb) and "credentials" in report.failed:
            report.skip(later[3:], "the credentials were refused")
            return _summary(report)
        _probes(args, environ, report, client, sb, options)
    finally:
        client.close()
    return _summary(report)


def _probes(
    args: argparse.Namespace,
    environ: Mapping[str, str],
    report: _Report,
    client: ServiceBusAdministrationClient,
    sb: ServiceBusOptions,
    options: EventBrokerOptions,
) -> None:
    wait = default_wait(environ) if args.wait is None else max(0.0, args.wait)
    listener = new_broker(environ, **PASSIVE)
    sender = new_broker(environ, heartbeat_idle_delay=1.0)  # its hello is the probe
    refusals: list[MessageRefusedEventArgs] = []
    listener.message_refused.subscribe(refusals.append)
    names: list[str] = []
    try:
        began = time.monotonic()
        why = _start_probe(listener, args.connect_timeout)
        if why is not None:
            _probe_failed(
                report, "listen", why, sb, ["send", "round_trip", "secret", "refusals", "cleanup"]
            )
            return
        names.append(subscription_of(listener) or "?")
        report.add(
            "listen",
            "OK",
            f"created temporary subscription {names[-1]} and receive from it (Manage, Listen)",
        )
        why = _start_probe(sender, args.connect_timeout)
        if why is not None:
            _probe_failed(report, "send", why, sb, ["round_trip"])
        else:
            names.append(subscription_of(sender) or "?")
            _round_trip(report, sender, listener)
        out_wait = wait - (time.monotonic() - began)
        if out_wait > 0:
            report.out.progress(
                f"listening {duration(out_wait)} more for the other instances (--wait)..."
            )
            time.sleep(out_wait)
        heard = [
            f"{info.host or '?'}/{info.instance_id[:8]}"
            for info in listener.instances
            if info.instance_id != sender.instance_id
        ]
        _secret_check(report, list(refusals), heard, options.application_name, wait)
    finally:
        with contextlib.suppress(Exception):
            sender.stop()
        with contextlib.suppress(Exception):
            listener.stop()
    _cleanup(report, client, sb, [n for n in names if n != "?"])


def _round_trip(report: _Report, sender: EventBroker, listener: EventBroker) -> None:
    if not _wait_for(lambda: getattr(sender.transport, "queued", 0) == 0, _ROUND_TRIP_TIMEOUT):
        error = getattr(sender.transport, "last_error", "") or "no answer"
        report.add(
            "send",
            "FAIL",
            f"a message was not sent within {_ROUND_TRIP_TIMEOUT:g} s: {error}",
            _right_fix("send") if _missing_right(error) else "see the error",
        )
        report.skip(["round_trip"], "sending failed")
        return
    report.add("send", "OK", "sent a signed heartbeat to the topic (Send)")
    arrived = _wait_for(
        lambda: any(i.instance_id == sender.instance_id for i in listener.instances),
        _ROUND_TRIP_TIMEOUT,
    )
    if not arrived:
        report.add(
            "round_trip",
            "FAIL",
            f"the heartbeat sent did not arrive on the other subscription within "
            f"{_ROUND_TRIP_TIMEOUT:g} s",
            "check that nothing else consumes or filters this topic's subscriptions, and that "
            f"{SB}TOPIC is the app's",
        )
        return
    lag = next(
        (i.heartbeat_lag for i in listener.instances if i.instance_id == sender.instance_id), None
    )
    report.add(
        "round_trip",
        "OK",
        "a signed heartbeat went through the topic to another subscription and verified "
        f"(lag {duration(lag)})",
    )


def _summary(report: _Report) -> int:
    failed = report.failed
    report.out.emit(
        {"type": "summary", "ok": not failed, "failed": failed},
        f"{len(failed)} check(s) failed: {', '.join(failed)}" if failed else "all checks passed",
    )
    return FAILED if failed else OK
