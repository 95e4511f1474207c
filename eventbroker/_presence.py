"""Presence: which instances of the application this broker has heard from, and when.

Pure state with `now` passed in. An instance is added by its hello, heartbeats or events,
removed by its bye, and drops out when not heard from for three of its heartbeat intervals.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import attrs

from ._envelope import Envelope, Heartbeat

MISSED_HEARTBEATS = 3
"""An instance not heard from for this many heartbeat intervals drops out."""


@attrs.frozen
class InstanceInfo:
    """One instance of the application (`EventBroker.instances`, `EventBroker.instance_info`)."""

    instance_id: str
    application_name: str
    site_id: str | None
    host: str | None
    """None when its messages did not say (an older release)."""
    started_at: float | None
    """Seconds since the epoch (its own clock); None when unknown."""
    last_seen: float
    """When a message from it last arrived (this instance's clock)."""
    last_sequence: int | None
    """The highest event sequence number it is known to have sent (None: none yet)."""
    heartbeat_interval: float | None
    """Its presence heartbeat interval (0: it sends none; None: unknown)."""
    summary: Mapping[str, Any] | None = None
    """The small counter summary its last heartbeat carried, if any."""
    heartbeat_lag: float | None = None
    """Seconds from the send time of its last heartbeat to its arrival here (delivery delay
    plus the difference of the two clocks); None before a heartbeat arrived."""
    protocol: int | None = None
    """What it can read (`Heartbeat.protocol`: 1 for a release that did not say); None before
    a heartbeat arrived."""


class _Record:
    __slots__ = (
        "application_name",
        "heartbeat_interval",
        "heartbeat_lag",
        "host",
        "instance_id",
        "last_seen",
        "last_sequence",
        "protocol",
        "site_id",
        "started_at",
        "summary",
    )

    def __init__(self, instance_id: str, application_name: str, site_id: str | None) -> None:
        self.instance_id = instance_id
        self.application_name = application_name
        self.site_id = site_id
        self.host: str | None = None
        self.started_at: float | None = None
        self.last_seen = 0.0
        self.last_sequence: int | None = None
        self.heartbeat_interval: float | None = None
        self.summary: Mapping[str, Any] | None = None
        self.heartbeat_lag: float | None = None
        self.protocol: int | None = None

    def info(self) -> InstanceInfo:
        return InstanceInfo(
            self.instance_id,
            self.application_name,
            self.site_id,
            self.host,
            self.started_at,
            self.last_seen,
            self.last_sequence,
            self.heartbeat_interval,
            self.summary,
            self.heartbeat_lag,
            self.protocol,
        )


def _last_seen(record: _Record) -> float:
    return record.last_seen


class Presence:
    """The instances heard from, bounded by `max_instances` (least recently heard drop first)."""

    def __init__(self, default_interval: float, *, max_instances: int = 10_000) -> None:
        self.default_interval = default_interval
        """Used for instances that did not say their interval (or send no presence)."""
        self._max = max_instances
        self._records: dict[str, _Record] = {}
        self._last_heartbeat: dict[str, float] = {}  # sent_at of the newest heartbeat taken
        self._protocols: Counter[int] = Counter()  # the protocols the records said, counted
        self.lowest_protocol: int | None = None
        """The lowest `InstanceInfo.protocol` among the instances present (None: none said
        one yet); kept up to date on every change, so any thread reads it at no cost."""

    def heartbeat(self, heartbeat: Heartbeat, now: float) -> bool:
        """Record a heartbeat; False for one not newer than the last taken (a replay)."""
        instance_id = heartbeat.instance_id
        if heartbeat.sent_at <= self._last_heartbeat.get(instance_id, float("-inf")):
            return False
        self._last_heartbeat[instance_id] = heartbeat.sent_at
        record = self._record(instance_id, heartbeat.application_name, heartbeat.site_id)
        record.host = heartbeat.host
        record.started_at = heartbeat.started_at
        record.last_seen = now
        record.heartbeat_lag = now - heartbeat.sent_at
        if heartbeat.last_sequence > (record.last_sequence or 0):
            record.last_sequence = heartbeat.last_sequence
        record.heartbeat_interval = heartbeat.interval
        if record.protocol != heartbeat.protocol:
            self._count_protocol(record.protocol, -1)
            record.protocol = heartbeat.protocol
            self._count_protocol(record.protocol, 1)
        summary = heartbeat.summary
        record.summary = summary if isinstance(summary, Mapping) else None
        return True

    def event(self, envelope: Envelope, now: float) -> None:
        """Record an event (adds its sender if its hello was never heard)."""
        record = self._records.get(envelope.instance_id)
        if record is None:
            record = self._record(envelope.instance_id, envelope.application_name, envelope.site_id)
            record.host = envelope.host
            record.started_at = envelope.started_at
        record.last_seen = now
        if envelope.sequence > (record.last_sequence or 0):
            record.last_sequence = envelope.sequence

    def bye(self, instance_id: str) -> None:
        record = self._records.pop(instance_id, None)
        if record is not None:
            self._count_protocol(record.protocol, -1)

    def expire(self, now: float) -> list[InstanceInfo]:
        """Remove and return the instances silent for `MISSED_HEARTBEATS` intervals."""
        gone = [r for r in self._records.values() if now - r.last_seen > self._limit(r)]
        for record in gone:
            del self._records[record.instance_id]
            self._last_heartbeat.pop(record.instance_id, None)
            self._count_protocol(record.protocol, -1)
        return [record.info() for record in gone]

    def instances(self) -> list[InstanceInfo]:
        """Snapshots, ordered by host, start time and id."""
        records = list(self._records.values())  # one step: the broker loop may add meanwhile
        return sorted(
            (record.info() for record in records),
            key=lambda i: (i.host or "", i.started_at or 0.0, i.instance_id),
        )

    def __len__(self) -> int:
        return len(self._records)

    def _limit(self, record: _Record) -> float:
        interval = record.heartbeat_interval or self.default_interval
        return MISSED_HEARTBEATS * interval if interval > 0 else float("inf")

    def _record(self, instance_id: str, application_name: str, site_id: str | None) -> _Record:
        records = self._records
        record = records.get(instance_id)
        if record is None:
            record = records[instance_id] = _Record(instance_id, application_name, site_id)
            if len(records) > self._max:
                # the least recently heard of the others (the new record has not been heard yet)
                oldest = min((r for r in records.values() if r is not record), key=_last_seen)
                del records[oldest.instance_id]
                self._count_protocol(oldest.protocol, -1)
            if len(self._last_heartbeat) > 2 * self._max:
                for stale in [k for k in self._last_heartbeat if k not in records]:
                    del self._last_heartbeat[stale]
        return record

    def _count_protocol(self, protocol: int | None, step: int) -> None:
        if protocol is None:
            return
        protocols = self._protocols
        protocols[protocol] += step
        if protocols[protocol] <= 0:
            del protocols[protocol]
        self.lowest_protocol = min(protocols, default=None)  # a few distinct values at most
