"""`EventBrokerOptions`: the broker's settings, each also readable from the environment."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import attrs

from ._envelope import normalize_keys

Secret = str | tuple[str, ...] | Mapping[str, str]


def _secret(value: str | list[str] | tuple[str, ...] | Mapping[str, str]) -> Secret:
    if isinstance(value, list):
        value = tuple(value)
    normalize_keys(value)  # raises naming what is wrong
    return value


def _positive(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(
            f"EventBrokerOptions.{attribute.name} must be a finite number > 0, got {value!r}"
        )


def _not_negative(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(
            f"EventBrokerOptions.{attribute.name} must be a finite number >= 0 "
            f"(0 turns it off), got {value!r}"
        )


@attrs.frozen
class EventBrokerOptions:
    """Settings of an `EventBroker` (keyword arguments; `from_env()` reads the environment).

    `secret` is one shared secret, or several to rotate keys without downtime: the first one
    signs, every one verifies (a list derives key ids from the secrets; a dict names them).
    """

    secret: Secret = attrs.field(converter=_secret, repr=False)
    application_name: str = attrs.field(default="default")
    """Instances with another application name on the same topic are ignored."""
    site_id: str | None = None
    max_message_bytes: int = attrs.field(default=256 * 1024, validator=_positive)
    """Largest envelope sent or accepted (256 KiB: Service Bus standard tier)."""
    missed_event_timeout: float = attrs.field(default=5.0, validator=_positive)
    """How long a sequence gap may stay open before `event_missed` fires."""
    replay_window: float = attrs.field(default=300.0, validator=_positive)
    """Envelopes whose send time is further than this from now (seconds) are refused."""
    dedup_capacity: int = attrs.field(default=100_000, validator=_positive)
    """How many recent message ids are remembered to drop redeliveries cheaply (replays are
    refused for the whole replay window whatever this is: by sequence number)."""
    heartbeat_interval: float = attrs.field(default=30.0, validator=_not_negative)
    """Seconds between presence heartbeats (0: none; an instance then appears only through
    its events and hello)."""
    heartbeat_idle_delay: float = attrs.field(default=1.0, validator=_not_negative)
    """Seconds after its last event that an instance announces its last sequence number, so a
    lost last event is detected (0: only presence heartbeats announce it)."""
    connect_timeout: float = attrs.field(default=0.0, validator=_not_negative)
    """How long `start()` waits for the first connection (0: return at once and connect in the
    background)."""
    stop_timeout: float = attrs.field(default=10.0, validator=_positive)
    """`stop()` returns within this many seconds, whatever is down."""

    @application_name.validator
    def _check_name(self, attribute: attrs.Attribute[str], value: str) -> None:
        if not isinstance(value, str) or not value:
            raise ValueError(
                f"EventBrokerOptions.application_name must be a non-empty str, got {value!r}"
            )

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> EventBrokerOptions:
        """Options from `EVENTBROKER_*` variables; keyword arguments win over the environment.

        `EVENTBROKER_SECRET` holds one secret or several separated by commas (the first signs).
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        if "EVENTBROKER_SECRET" in env:
            secrets = [s.strip() for s in env["EVENTBROKER_SECRET"].split(",") if s.strip()]
            values["secret"] = secrets[0] if len(secrets) == 1 else tuple(secrets)
        for name, kind in (
            ("application_name", str),
            ("site_id", str),
            ("max_message_bytes", int),
            ("missed_event_timeout", float),
            ("replay_window", float),
            ("dedup_capacity", int),
            ("heartbeat_interval", float),
            ("heartbeat_idle_delay", float),
            ("connect_timeout", float),
            ("stop_timeout", float),
        ):
            variable = f"EVENTBROKER_{name.upper()}"
            if variable in env:
                try:
                    values[name] = kind(env[variable])
                except ValueError:
                    raise ValueError(
                        f"{variable}={env[variable]!r} is not a valid {kind.__name__}"
                    ) from None
        values.update(overrides)
        if "secret" not in values:
            raise ValueError(
                "no secret configured: set EVENTBROKER_SECRET (comma-separated to rotate keys) "
                "or pass secret=..."
            )
        return cls(**values)
