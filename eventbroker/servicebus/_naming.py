"""Service Bus naming rules: subscription names and their derived default."""

from __future__ import annotations

import re
import socket
import uuid

from ._errors import SubscriptionNameError

MAX_SUBSCRIPTION_NAME = 50
_VALID = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")
_INVALID_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_RULE = (
    "Service Bus subscription names are 1 to 50 characters of letters, digits, '.', '-' "
    "and '_', starting and ending with a letter or digit"
)


def check_subscription_name(name: str) -> None:
    """Raise `SubscriptionNameError` naming the broken rule if `name` is not a valid name."""
    if not name:
        raise SubscriptionNameError(f"subscription name is empty: {_RULE}")
    if len(name) > MAX_SUBSCRIPTION_NAME:
        raise SubscriptionNameError(
            f"subscription name {name!r} has {len(name)} characters, more than the "
            f"{MAX_SUBSCRIPTION_NAME} allowed: {_RULE}"
        )
    if not _VALID.match(name):
        raise SubscriptionNameError(f"subscription name {name!r} is invalid: {_RULE}")


def _clean(part: str, limit: int) -> str:
    return _INVALID_CHARS.sub("-", part).strip("._-")[:limit].strip("._-")


def default_subscription_name(
    application_name: str, host_name: str | None = None, suffix: str | None = None
) -> str:
    """``<host>-<application>-<8 hex>``: unique per transport object, valid, at most 50 chars."""
    host = _clean(host_name if host_name is not None else socket.gethostname(), 20)
    app = _clean(application_name, 20)
    tail = _clean(suffix if suffix is not None else uuid.uuid4().hex[:8], 8) or "x"
    name = "-".join(part for part in (host, app, tail) if part)
    check_subscription_name(name)
    return name


def is_default_subscription_name(name: str, application_name: str) -> bool:
    """Whether `name` has the shape `default_subscription_name` gives `application_name`'s
    instances (``<host>-<application>-<8 hex>``, host optional): the names `eventbroker
    subscriptions prune` may delete."""
    app = _clean(application_name, 20)
    if not app:
        return False
    pattern = rf"(?:[A-Za-z0-9._-]+-)?{re.escape(app)}-[0-9a-f]{{8}}"
    return re.fullmatch(pattern, name) is not None
