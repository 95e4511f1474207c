"""``python -m samples.inventory``: the one-command demo (see docs/inventory-sample.md).

``python -m samples.inventory web | job | feed`` run one role of a real deployment.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ._settings import InventorySettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m samples.inventory",
        description="Inventory import + cache invalidation demo (two web instances, one job).",
    )
    parser.add_argument(
        "role",
        nargs="?",
        choices=("demo", "web", "job", "feed"),
        default="demo",
        help="demo (default): the whole story; web/job: one instance of a deployment "
        "(Service Bus); feed: a demo inventory system",
    )
    parser.add_argument(
        "--transport",
        choices=("memory", "servicebus"),
        default="memory",
        help="demo only. memory: one process, in-memory hub (default); "
        "servicebus: separate OS processes over Service Bus",
    )
    parser.add_argument(
        "--connection-string",
        help="Service Bus connection string (servicebus demo: default the loopback broker)",
    )
    parser.add_argument("--port", type=int, default=8100, help="feed role: port (default 8100)")
    parser.add_argument("--host", default="0.0.0.0", help="web role: listen address (0.0.0.0)")
    parser.add_argument(
        "--manual", action="store_true", help="job role: run only on request, not on a schedule"
    )
    parser.add_argument(
        "--report", action="store_true", help="web/job roles: JSON lines on stdout (demo use)"
    )
    parser.add_argument(
        "--chunk-pause", type=float, default=0.0, help="job role: seconds between upsert chunks"
    )
    parser.add_argument(
        "--serve",
        action="store_true",
        help="demo only: keep the instances serving after the story (the farm view shows them) "
        "until Ctrl-C",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log library messages")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose or args.role in ("web", "job") else logging.CRITICAL,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = InventorySettings.from_env()
    except ValueError as exc:
        parser.error(str(exc))

    from ._roles import RoleError, run_feed, run_job, run_web, servicebus_environ

    try:
        if args.role == "feed":
            run_feed(args.port)
            return 0
        if args.role == "web":
            environ = servicebus_environ(args.connection_string)
            run_web(settings, environ, host=args.host, reporting=args.report)
            return 0
        if args.role == "job":
            environ = servicebus_environ(args.connection_string)
            run_job(
                settings,
                environ,
                scheduled=not args.manual,
                reporting=args.report,
                chunk_pause=args.chunk_pause,
            )
            return 0
        if args.transport == "servicebus":
            from ._multiprocess import run_servicebus_demo

            return run_servicebus_demo(settings, args.connection_string)
    except RoleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from ._demo import run_demo

    return run_demo(settings, serve=args.serve)


if __name__ == "__main__":
    sys.exit(main())
