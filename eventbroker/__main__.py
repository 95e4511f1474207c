"""``python -m eventbroker``: the operator command line (see docs/cli.md)."""

from ._cli import main

raise SystemExit(main())
