"""`subscriptions list` and `subscriptions prune`: the topic's subscriptions through the
administration client; prune deletes this application's idle ones, never a live one."""

from __future__ import annotations

import argparse
import datetime
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from ._common import (
    FAILED,
    OK,
    PASSIVE,
    USAGE,
    CliError,
    Output,
    admin,
    application_name,
    describe,
    duration,
    error_code,
    new_broker,
    running,
    servicebus_options,
    table,
    utc,
)
from ._watch import default_wait

if TYPE_CHECKING:
    from azure.servicebus.management import ServiceBusAdministrationClient

    from ..servicebus import ServiceBusOptions

DEFAULT_IDLE_MINUTES = 10.0
"""A live instance asks for messages every few seconds (``receive_wait``), so its subscription
is accessed far more recently than this."""


@attrs.frozen
class SubscriptionRow:
    name: str
    created_at: float | None
    accessed_at: float | None
    active: int
    dead_letter: int
    total: int
    auto_delete_on_idle: float | None
    of_this_application: bool


def _seconds(value: object) -> float | None:
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.UTC)
        return value.timestamp()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    return None


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0


def _rows(
    client: ServiceBusAdministrationClient, options: ServiceBusOptions, application: str
) -> list[SubscriptionRow]:
    from azure.core.exceptions import ResourceNotFoundError

    from ..servicebus._naming import is_default_subscription_name

    try:
        idle = {
            s.name: _seconds(s.auto_delete_on_idle)
            for s in client.list_subscriptions(options.topic)
        }
        runtime = list(client.list_subscriptions_runtime_properties(options.topic))
    except ResourceNotFoundError:
        raise CliError(
            f"topic {options.topic!r} does not exist (EVENTBROKER_SERVICEBUS_TOPIC)", FAILED
        ) from None
    except Exception as exc:
        raise CliError(
            f"cannot list the subscriptions of topic {options.topic!r}: {describe(exc, options)}",
            error_code(exc, options),
        ) from None
    return [
        SubscriptionRow(
            name=r.name,
            created_at=_seconds(r.created_at_utc),
            accessed_at=_seconds(r.accessed_at_utc),
            active=_int(r.active_message_count),
            dead_letter=_int(r.dead_letter_message_count),
            total=_int(r.total_message_count),
            auto_delete_on_idle=idle.get(r.name),
            of_this_application=is_default_subscription_name(r.name, application),
        )
        for r in sorted(runtime, key=lambda r: r.name)
    ]


def _idle(row: SubscriptionRow, now: float) -> float | None:
    return None if row.accessed_at is None else max(0.0, now - row.accessed_at)


def _record(row: SubscriptionRow, now: float, **extra: Any) -> dict[str, Any]:
    return {
        "type": "subscription",
        "name": row.name,
        "created_at": row.created_at,
        "accessed_at": row.accessed_at,
        "idle_seconds": _idle(row, now),
        "active_messages": row.active,
        "dead_letter_messages": row.dead_letter,
        "total_messages": row.total,
        "auto_delete_on_idle": row.auto_delete_on_idle,
        "this_application": row.of_this_application,
        **extra,
    }


def list_subscriptions(args: argparse.Namespace, environ: Mapping[str, str], out: Output) -> int:
    options = servicebus_options(environ)
    application = application_name(environ)
    client = admin(options)
    try:
        rows = _rows(client, options, application)
    finally:
        client.close()
    now = time.time()
    if out.json:
        for row in rows:
            out.emit(_record(row, now), "")
        return OK
    lines = table(
        ["SUBSCRIPTION", "APP", "IDLE", "ACTIVE", "DEAD-LETTER", "AUTO-DELETE", "CREATED"],
        (
            [
                row.name,
                "yes" if row.of_this_application else "-",
                duration(_idle(row, now)),
                str(row.active),
                str(row.dead_letter),
                duration(row.auto_delete_on_idle)
                if (row.auto_delete_on_idle or 0) < 10**9
                else "never",
                utc(row.created_at),
            ]
            for row in rows
        ),
    )
    for line in lines:
        out.text(line)
    out.text(
        f"{len(rows)} subscription(s) on topic {options.topic!r}; APP yes: named like the "
        f"instances of {application!r} (<host>-{application}-<8 hex>)"
    )
    return OK


def _owner(
    client: ServiceBusAdministrationClient, options: ServiceBusOptions, name: str
) -> str | None:
    """The instance id in the subscription's own-message rule (the transport adds it)."""
    from ..servicebus._admin import OWN_MESSAGES_RULE

    try:
        rule = client.get_rule(options.topic, name, OWN_MESSAGES_RULE)
    except Exception:  # no rule (filter_own_messages off), or gone: unknown
        return None
    parameters = getattr(rule.filter, "parameters", None) or {}
    owner = parameters.get("@own") if isinstance(parameters, Mapping) else None
    return owner if isinstance(owner, str) else None


def _live_instances(
    args: argparse.Namespace, environ: Mapping[str, str], out: Output, wait: float
) -> set[str]:
    if not wait:
        return set()
    broker = new_broker(environ, **PASSIVE)
    with running(broker, args.connect_timeout):
        out.progress(
            f"listening for heartbeats for {wait:g} s (--wait) to know the live instances..."
        )
        time.sleep(wait)
        live = {info.instance_id for info in broker.instances}
    out.progress(f"{len(live)} live instance(s) heard")
    return live


def _decisions(
    rows: list[SubscriptionRow],
    client: ServiceBusAdministrationClient,
    options: ServiceBusOptions,
    live: set[str],
    threshold: float,
    now: float,
) -> Iterator[tuple[SubscriptionRow, bool, str, str | None]]:
    """(row, delete?, why, owner instance) for each subscription of this application."""
    for row in rows:
        if not row.of_this_application:
            continue
        idle = _idle(row, now)
        if idle is None:
            yield row, False, "its last access time is unknown", None
            continue
        if idle < threshold:
            yield row, False, f"accessed {duration(idle)} ago (under {duration(threshold)})", None
            continue
        owner = _owner(client, options, row.name)
        if owner is not None and owner in live:
            yield row, False, f"instance {owner} is running (its heartbeat was heard)", owner
            continue
        yield row, True, f"idle for {duration(idle)}", owner


def prune(args: argparse.Namespace, environ: Mapping[str, str], out: Output) -> int:
    threshold = args.idle_minutes * 60.0
    if threshold <= 0:
        raise CliError(f"--idle-minutes must be more than 0, got {args.idle_minutes:g}", USAGE)
    wait = default_wait(environ) if args.wait is None else args.wait
    if wait < 0:
        raise CliError(f"--wait must be 0 or more seconds, got {wait:g}", USAGE)
    options = servicebus_options(environ)
    application = application_name(environ)
    live = _live_instances(args, environ, out, wait)
    client = admin(options)
    deleted = kept = 0
    try:
        rows = _rows(client, options, application)
        now = time.time()
        for row, delete, why, owner in _decisions(rows, client, options, live, threshold, now):
            action = "kept"
            if delete and args.dry_run:
                action = "would_delete"
            elif delete:
                action = _delete(client, options, row.name)
            deleted += action in ("deleted", "would_delete", "gone")
            kept += action == "kept"
            out.emit(
                _record(row, now, action=action, reason=why, instance_id=owner),
                f"{action.replace('_', ' '):12}  {row.name}  ({why})",
            )
    finally:
        client.close()
    others = sum(not row.of_this_application for row in rows)
    out.text(
        f"{'would delete' if args.dry_run else 'deleted'} {deleted}, kept {kept} of "
        f"{application!r}; left alone {others} subscription(s) of other applications or "
        "named by hand"
    )
    return OK


def _delete(client: ServiceBusAdministrationClient, options: ServiceBusOptions, name: str) -> str:
    from azure.core.exceptions import ResourceNotFoundError

    try:
        client.delete_subscription(options.topic, name)
    except ResourceNotFoundError:
        return "gone"  # auto-deleted, or another prune was faster
    except Exception as exc:
        raise CliError(
            f"cannot delete subscription {name!r}: {describe(exc, options)}",
            error_code(exc, options),
        ) from None
    return "deleted"
