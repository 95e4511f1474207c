"""``python -m samples.inventory``: the one-command demo (see docs/inventory-sample.md)."""

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
        "--transport",
        choices=("memory", "servicebus"),
        default="memory",
        help="memory: one process, in-memory hub (default); servicebus: separate OS processes",
    )
    parser.add_argument("--connection-string", help="Service Bus connection string (servicebus)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log library messages")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.ERROR,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = InventorySettings.from_env()
    except ValueError as exc:
        parser.error(str(exc))
    if args.transport == "servicebus":
        from ._multiprocess import run_servicebus_demo

        return run_servicebus_demo(settings, args.connection_string)
    from ._demo import run_demo

    return run_demo(settings)


if __name__ == "__main__":
    sys.exit(main())
