"""The operator command line: ``eventbroker`` (also ``python -m eventbroker``).

It reads the app's own settings (``EVENTBROKER_*``, ``EVENTBROKER_SERVICEBUS_*``) and joins the
topic with a temporary subscription of its own. Output is for people unless ``--json`` (one
JSON object per line). Exit codes: see `_common` (0 ok, 1 failed or nothing found, 2 usage or
configuration, 3 Service Bus unreachable, 130 interrupted). docs/cli.md documents it.
"""

from __future__ import annotations

import argparse
import signal
import uuid
from collections.abc import Callable, Mapping, Sequence
from types import FrameType

from cache._settings import process_environ

from ._common import (
    INTERRUPTED,
    CliError,
    Output,
    Redactor,
    configure_logging,
    note,
)

__all__ = ["main"]

_Command = Callable[[argparse.Namespace, Mapping[str, str], Output], int]


def _uuid(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a UUID (like 7e57c0de-0000-4000-8000-000000000001)"
        ) from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more seconds")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be 1 or more")
    return value


def build_parser() -> argparse.ArgumentParser:
    from ._watch import CLI_RAISER_ID

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="one JSON object per line, for scripts")
    common.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="show the library's and the SDK's log on stderr (-v warnings, -vv info, -vvv debug)",
    )
    common.add_argument(
        "--connect-timeout",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for Service Bus (default 30)",
    )
    parser = argparse.ArgumentParser(
        prog="eventbroker",
        description="Operate an app's event broker: watch and raise events, list the "
        "instances, check the set-up, tidy the topic's subscriptions. Reads the app's "
        "EVENTBROKER_* and EVENTBROKER_SERVICEBUS_* settings from the environment.",
        epilog="exit codes: 0 ok; 1 a check failed or nothing found; 2 usage or configuration "
        "error; 3 Service Bus unreachable; 130 interrupted. Details: docs/cli.md",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    listen = commands.add_parser(
        "listen",
        parents=[common],
        help="print every event and every refused message as it arrives",
        description="Attach a temporary subscription and print every verified event (event "
        "id, raiser, source instance, lag, param), every refused message with its cause, "
        "missed events and connection changes. Ctrl-C or SIGTERM stops it and deletes the "
        "subscription.",
    )
    listen.add_argument(
        "--count",
        type=_count,
        metavar="N",
        help="stop after N events (exit 1 if --timeout ends first)",
    )
    listen.add_argument("--timeout", type=_seconds, metavar="SECONDS", help="stop after SECONDS")

    raise_ = commands.add_parser(
        "raise",
        parents=[common],
        help="raise one event to every instance",
        description="Raise one event (broadcast to every instance) and wait until it is sent.",
    )
    raise_.add_argument("event_id", type=_uuid, metavar="EVENT_ID", help="the event's UUID")
    raise_.add_argument("--param", metavar="JSON", help="the event's param, as JSON")
    raise_.add_argument(
        "--raiser",
        type=_uuid,
        default=CLI_RAISER_ID,
        metavar="ID",
        help=f"the raiser id (default {CLI_RAISER_ID})",
    )
    raise_.add_argument(
        "--timeout",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for the send (default 30; exit 3 after)",
    )

    instances = commands.add_parser(
        "instances",
        parents=[common],
        help="list the instances heard from (presence heartbeats)",
        description="Listen for the instances' heartbeats, then list them: host, instance, "
        "site, started, last seen, last sequence number, heartbeat lag.",
    )
    instances.add_argument(
        "--wait",
        type=_seconds,
        metavar="SECONDS",
        help="how long to listen (default: the heartbeat interval + 5 s, 35 s at the defaults)",
    )

    doctor = commands.add_parser(
        "doctor",
        parents=[common],
        help="check settings, network, rights, a signed round trip and the shared secret",
        description="Check the configuration, that Service Bus is reachable, the credentials "
        "and the Manage, Send and Listen rights, a signed round trip through the topic, and "
        "that the other instances use the same secret. Prints each check with OK, FAIL or SKIP "
        "and the fix; exits 1 when one fails.",
    )
    doctor.add_argument(
        "--wait",
        type=_seconds,
        metavar="SECONDS",
        help="how long to listen for the other instances (default: the heartbeat interval + 5 s)",
    )

    subscriptions = commands.add_parser(
        "subscriptions",
        help="list or prune the topic's subscriptions",
        description="The topic's subscriptions: list them, or prune this application's idle ones.",
    )
    actions = subscriptions.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser(
        "list",
        parents=[common],
        help="every subscription with its idle time and message counts",
        description="List the topic's subscriptions: idle time (since last accessed), active "
        "and dead-lettered messages, AutoDeleteOnIdle, and whether the name is one of this "
        "application's instances'.",
    )
    prune = actions.add_parser(
        "prune",
        parents=[common],
        help="delete this application's idle subscriptions (never a live one)",
        description="Delete this application's subscriptions (named <host>-<application>-<8 "
        "hex>) not accessed for --idle-minutes, unless their instance is heard running. Other "
        "names are left alone.",
    )
    prune.add_argument(
        "--idle-minutes",
        type=float,
        default=10.0,
        metavar="MINUTES",
        help="prune only subscriptions not accessed for this long (default 10)",
    )
    prune.add_argument(
        "--wait",
        type=_seconds,
        metavar="SECONDS",
        help="listen this long for live instances first (default: the heartbeat interval + "
        "5 s; 0: judge by idle time only)",
    )
    prune.add_argument("--dry-run", action="store_true", help="say what would go; delete nothing")
    return parser


def _command(args: argparse.Namespace) -> _Command:
    from ._doctor import doctor
    from ._subscriptions import list_subscriptions, prune
    from ._watch import instances, listen, raise_event

    if args.command == "subscriptions":
        return list_subscriptions if args.action == "list" else prune
    commands: dict[str, _Command] = {
        "listen": listen,
        "raise": raise_event,
        "instances": instances,
        "doctor": doctor,
    }
    return commands[args.command]


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM ends a command as Ctrl-C does: cleanly


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    env = process_environ() if environ is None else environ
    args = build_parser().parse_args(argv)
    redactor = Redactor(env)
    configure_logging(args.verbose, redactor)
    out = Output(args.json, redactor)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _command(args)(args, env, out)
    except CliError as exc:
        note(redactor, f"eventbroker: error: {exc}")
        return exc.code
    except KeyboardInterrupt:
        note(redactor, "eventbroker: interrupted")
        return INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)
