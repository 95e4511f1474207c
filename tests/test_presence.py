"""Presence against a model: whatever joins, speaks, says bye, falls silent or is evicted, the
lowest protocol it keeps is the lowest of the instances it lists, and it stays bounded."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from eventbroker._envelope import Envelope, Heartbeat, HeartbeatKind
from eventbroker._presence import Presence

INSTANCES = st.sampled_from(["a", "b", "c", "d", "e"])
TIMES = st.floats(min_value=0, max_value=100, allow_nan=False)
EVENT = uuid.UUID(int=1)

operations = st.lists(
    st.one_of(
        st.tuples(st.just("heartbeat"), INSTANCES, st.sampled_from([1, 2, 3]), TIMES),
        st.tuples(st.just("event"), INSTANCES, TIMES),
        st.tuples(st.just("bye"), INSTANCES),
        st.tuples(st.just("expire"), TIMES),
    ),
    max_size=40,
)


def heartbeat(instance_id: str, protocol: int, now: float) -> Heartbeat:
    return Heartbeat(
        HeartbeatKind.PRESENCE,
        f"{instance_id}:h{now}",
        instance_id,
        "shop",
        None,
        "host",
        0.0,
        now,
        0,
        1.0,
        "k",
        protocol=protocol,
    )


def event(instance_id: str, now: float) -> Envelope:
    return Envelope(
        1, f"{instance_id}:1", EVENT, EVENT, instance_id, "shop", None, 1, now, None, "k"
    )


@given(operations)
def test_the_lowest_protocol_is_the_lowest_of_the_instances_present(ops: list[tuple]) -> None:  # type: ignore[type-arg]
    presence = Presence(1.0, max_instances=3)
    now = 0.0
    for op in ops:
        match op:
            case ("heartbeat", instance_id, protocol, at):
                now = max(now, at)
                presence.heartbeat(heartbeat(instance_id, protocol, at), now)
            case ("event", instance_id, at):
                now = max(now, at)
                presence.event(event(instance_id, at), now)
            case ("bye", instance_id):
                presence.bye(instance_id)
            case ("expire", at):
                now = max(now, at)
                presence.expire(now)
        listed = presence.instances()
        assert len(listed) <= 3
        said = [info.protocol for info in listed if info.protocol is not None]
        assert presence.lowest_protocol == min(said, default=None)
