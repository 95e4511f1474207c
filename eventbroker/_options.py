"""`EventBrokerOptions`: the broker's settings, each also readable from the environment."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from cache._settings import EnvSettings, Parser, env, hidden_repr, integer, number

from ._envelope import normalize_keys

Secret = str | tuple[str, ...] | Mapping[str, str]


def _secret(value: str | list[str] | tuple[str, ...] | Mapping[str, str]) -> Secret:
    if isinstance(value, list):
        value = tuple(value)
    normalize_keys(value)  # raises naming what is wrong
    return value


def _split_secrets(text: str) -> Secret:
    secrets = tuple(s.strip() for s in text.split(",") if s.strip())
    return secrets[0] if len(secrets) == 1 else secrets


_SECRETS = Parser("a secret list", "secrets separated by commas (the first signs)", _split_secrets)
_positive = number(above=0)
_off_or_positive = number(minimum=0, note="0 turns it off")
_count = integer(minimum=1)


def _env(name: str) -> dict[str, Any]:
    return env(f"EVENTBROKER_{name.upper()}")


@attrs.frozen
class EventBrokerOptions(EnvSettings):
    """Settings of an `EventBroker` (keyword arguments; `from_env()` reads the ``EVENTBROKER_*``
    environment variables, keyword arguments winning).

    `secret` is one shared secret, or several to rotate keys without downtime: the first one
    signs, every one verifies (a list derives key ids from the secrets; a dict names them).
    ``EVENTBROKER_SECRET`` holds one secret or several separated by commas.
    """

    secret: Secret = attrs.field(
        converter=_secret,
        repr=hidden_repr,
        metadata=env("EVENTBROKER_SECRET", secret=True, parser=_SECRETS),
    )
    application_name: str = attrs.field(default="default", metadata=_env("application_name"))
    """Instances with another application name on the same topic are ignored."""
    site_id: str | None = attrs.field(default=None, metadata=_env("site_id"))
    max_message_bytes: int = attrs.field(
        default=256 * 1024, validator=_count, metadata=_env("max_message_bytes")
    )
    """Largest envelope sent or accepted (256 KiB: Service Bus standard tier)."""
    missed_event_timeout: float = attrs.field(
        default=5.0, validator=_positive, metadata=_env("missed_event_timeout")
    )
    """How long a sequence gap may stay open before `event_missed` fires."""
    replay_window: float = attrs.field(
        default=300.0, validator=_positive, metadata=_env("replay_window")
    )
    """Envelopes whose send time is further than this from now (seconds) are refused."""
    dedup_capacity: int = attrs.field(
        default=100_000, validator=_count, metadata=_env("dedup_capacity")
    )
    """How many recent message ids are remembered to drop redeliveries cheaply (replays are
    refused for the whole replay window whatever this is: by sequence number)."""
    heartbeat_interval: float = attrs.field(
        default=30.0, validator=_off_or_positive, metadata=_env("heartbeat_interval")
    )
    """Seconds between presence heartbeats (0: none; an instance then appears only through
    its events and hello)."""
    heartbeat_idle_delay: float = attrs.field(
        default=1.0, validator=_off_or_positive, metadata=_env("heartbeat_idle_delay")
    )
    """Seconds after its last event that an instance announces its last sequence number, so a
    lost last event is detected (0: only presence heartbeats announce it)."""
    connect_timeout: float = attrs.field(
        default=0.0,
        validator=number(minimum=0, note="0: return at once"),
        metadata=_env("connect_timeout"),
    )
    """How long `start()` waits for the first connection (0: return at once and connect in the
    background)."""
    stop_timeout: float = attrs.field(
        default=10.0, validator=_positive, metadata=_env("stop_timeout")
    )
    """`stop()` returns within this many seconds, whatever is down."""

    @application_name.validator
    def _check_name(self, attribute: attrs.Attribute[str], value: str) -> None:
        if not isinstance(value, str) or not value:
            raise ValueError(
                f"EventBrokerOptions.application_name must be a non-empty str, got {value!r}"
            )
