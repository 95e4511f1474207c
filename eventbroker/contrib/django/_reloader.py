"""The runserver reloader's parent lets its serving child stop cleanly.

Django's parent process SIGKILLs its serving child when Ctrl+C or SIGTERM reaches the parent
(`subprocess.run` kills on any exception), so the child never deletes its Service Bus
subscription: the stale subscriptions of issue 9. This module replaces the parent's
`restart_with_reloader` with one that lets the child stop.

The only module of the app that touches the process environment, and for no setting: it reads
Django's reloader marker (``RUN_MAIN``, "true" in the serving child) and hands the child a copy
of the environment with the marker set, as Django's own `restart_with_reloader` does.
"""

from __future__ import annotations

import os
import signal
import subprocess

CHILD_STOP_WAIT = 30.0
"""How long the runserver reloader's parent waits for its child to stop before killing it."""


def install() -> None:
    """In the reloader's parent (never in the child), run the child so that it may stop: on
    Ctrl+C (which the child got too) wait for it; on SIGTERM pass it on and wait; a second
    Ctrl+C kills it."""
    from django.utils import autoreload

    variable = getattr(autoreload, "DJANGO_AUTORELOAD_ENV", None)
    child_arguments = getattr(autoreload, "get_child_arguments", None)
    if variable is None or child_arguments is None or os.environ.get(variable) == "true":
        return
    if getattr(autoreload.restart_with_reloader, "_eventbroker", False):
        return

    def restart_with_reloader() -> int:
        environ = {**os.environ, variable: "true"}
        arguments = child_arguments()
        while True:
            child = subprocess.Popen(arguments, env=environ, close_fds=False)
            try:
                code = child.wait()
            except BaseException as exc:
                _stop_child(child, forward=not isinstance(exc, KeyboardInterrupt))
                raise
            if code != 3:  # 3: reload after a code change
                return code

    restart_with_reloader._eventbroker = True  # type: ignore[attr-defined]
    autoreload.restart_with_reloader = restart_with_reloader


def _stop_child(child: subprocess.Popen[bytes], *, forward: bool) -> None:
    try:
        if forward and child.poll() is None:
            child.send_signal(signal.SIGTERM)  # Django's child exits cleanly on SIGTERM
        child.wait(CHILD_STOP_WAIT)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        child.kill()
        child.wait()
