"""The broker's flow (events in and out, delivery lag, refusals, gaps per window of 10 s) and the
heartbeat summary: what a provider returns travels in every heartbeat; a failing, oversize or
non-dict summary is left out (logged once a minute) and the heartbeat still goes out."""

from __future__ import annotations

import logging
import math
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventbroker import EventBroker, EventBrokerOptions, Flow, InMemoryHub, InMemoryTransport
from eventbroker._broker import MAX_SUMMARY_BYTES
from eventbroker._flow import LAG_BOUNDS, WINDOW, FlowRecorder, lag_percentile

from ._support import FakeClock, ManualTransport, wait_until

SECRET = "flow-secret-0123456789"
EVENT = uuid.UUID("5d1e0c1a-0000-4000-8000-000000000001")
RAISER = uuid.UUID("5d1e0c1a-0000-4000-8000-000000000002")


# -- the recorder ---------------------------------------------------------------------------------


def _bucket(value: float) -> int:
    return next((i for i, bound in enumerate(LAG_BOUNDS) if value <= bound), len(LAG_BOUNDS))


@given(
    st.lists(st.floats(min_value=-5, max_value=300, allow_nan=False), min_size=1, max_size=300),
    st.sampled_from([0.5, 0.9, 0.99]),
)
def test_a_percentile_from_the_histogram_lies_in_the_bucket_of_the_exact_one(
    lags: list[float], q: float
) -> None:
    recorder = FlowRecorder()
    for lag in lags:
        recorder.lag(lag)
    flow = recorder.snapshot(1000.0, {}, {})
    reported = lag_percentile(flow.windows[-1].lag, q)
    assert reported is not None
    exact = sorted(max(0.0, lag) for lag in lags)[math.ceil(q * len(lags)) - 1]
    index = _bucket(exact)
    low = 0.0 if index == 0 else LAG_BOUNDS[index - 1]
    high = LAG_BOUNDS[min(index, len(LAG_BOUNDS) - 1)]
    assert low <= reported <= high


def test_windows_close_on_the_clock_and_keep_the_increase_of_each_counter() -> None:
    recorder = FlowRecorder(windows=3)
    counts = {"dispatched": 0, "published": 0, "gaps": 0, "reconnects": 0}
    refused: dict[str, int] = {}
    recorder.tick(1000.0, counts, refused)  # opens the window [1000, 1010)
    counts.update(dispatched=20, published=5)
    refused["bad_signature"] = 2
    for _ in range(20):
        recorder.lag(0.002)
    recorder.tick(1009.9, counts, refused)  # same window
    recorder.tick(1010.0, counts, refused)  # closes it
    counts.update(dispatched=21, gaps=1)
    refused["bad_signature"] = 3
    refused["replay"] = 1
    recorder.lag(0.5)
    flow = recorder.snapshot(1013.0, counts, refused)
    first, current = flow.windows
    assert (first.start, first.end, first.events_in, first.events_out) == (1000.0, 1010.0, 20, 5)
    assert first.refused == {"bad_signature": 2} and first.gaps == 0
    assert first.lag_p50 is not None and 0.0016 < first.lag_p50 <= 0.0025
    assert (current.start, current.end, current.events_in, current.gaps) == (1010.0, 1013.0, 1, 1)
    assert current.refused == {"bad_signature": 1, "replay": 1}
    minute = flow.last(60)
    assert (minute.events_in, minute.events_out, minute.gaps) == (21, 5, 1)
    assert minute.refused == {"bad_signature": 3, "replay": 1}
    for second in range(1020, 1100, 10):  # bounded: only the last windows are kept
        recorder.tick(float(second), counts, refused)
    assert len(recorder.snapshot(1100.0, counts, refused).windows) == 4


def test_an_empty_flow_has_no_lag() -> None:
    minute = Flow(()).last()
    assert (minute.events_in, minute.lag_p50, minute.lag_p99) == (0, None, None)


# -- the broker -----------------------------------------------------------------------------------


def test_the_broker_counts_its_flow_and_the_delivery_lag_of_each_event() -> None:
    hub, clock = InMemoryHub(), FakeClock()
    options = EventBrokerOptions(secret=SECRET, application_name="shop")
    with (
        EventBroker(InMemoryTransport(hub), options, clock=clock) as a,
        EventBroker(InMemoryTransport(hub), options, clock=clock) as b,
    ):
        for n in range(5):
            a.raise_event(EVENT, RAISER, n)
        hub.drain()
        clock.advance(WINDOW)
        wait_until(lambda: len(b.flow.windows) >= 2)  # the maintenance task closed the window
        minute = b.flow.last(60)
        assert (minute.events_in, minute.events_out) == (5, 0)
        assert a.flow.last(60).events_out == 5
        # the fake clock did not move between send and delivery: every lag is in bucket 0
        assert minute.lag == {0: 5} and minute.lag_p99 is not None and minute.lag_p99 <= 1e-4


def _summary_heartbeats(transport: ManualTransport) -> list[object]:
    return [fields.get("summary") for fields in transport.heartbeats()]


def test_every_heartbeat_but_the_bye_carries_the_summary_and_peers_keep_it() -> None:
    hub, clock = InMemoryHub(), FakeClock()
    options = EventBrokerOptions(secret=SECRET, application_name="shop", heartbeat_interval=30)
    a = EventBroker(InMemoryTransport(hub), options, clock=clock)
    calls: list[int] = []

    def summary() -> dict[str, object]:
        calls.append(1)
        return {"v": 1, "events": {"in": len(calls)}}

    a.summary_provider = summary
    b = EventBroker(InMemoryTransport(hub), options, clock=clock)
    with b, a:
        hub.drain()
        [info] = b.instances
        assert info.summary == {"v": 1, "events": {"in": 1}}  # the hello
        a.request_heartbeat()  # within a second: a fresh summary
        clock.advance(1.0)
        wait_until(lambda: b.instances[0].summary == {"v": 1, "events": {"in": 2}})


def test_a_failing_oversize_or_odd_summary_is_left_out_and_logged_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport, clock = ManualTransport(), FakeClock()
    options = EventBrokerOptions(secret=SECRET, heartbeat_interval=30)
    answers: list[object] = []

    def provider() -> object:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    broker = EventBroker(transport, options, clock=clock)
    broker.summary_provider = provider  # type: ignore[assignment]
    answers.append(RuntimeError("counters unavailable"))  # the hello
    with caplog.at_level(logging.WARNING, logger="eventbroker"), broker:
        for answer in (
            RuntimeError("again"),
            {"big": "x" * MAX_SUMMARY_BYTES},
            ["not", "a", "dict"],
            {"not json": object()},
            {"v": 1},
        ):
            answers.append(answer)
            sent = len(transport.heartbeats())
            clock.advance(30)
            wait_until(lambda sent=sent: len(transport.heartbeats()) > sent)  # type: ignore[misc]
    summaries = _summary_heartbeats(transport)
    assert summaries[:6] == [None, None, None, None, None, {"v": 1}]  # every heartbeat went out
    lines = [r.getMessage() for r in caplog.records if "summary was left out" in r.getMessage()]
    # heartbeats every 30 s (clock): at most one line a minute, saying how many it held back
    assert len(lines) == 3 and "counters unavailable" in lines[0]
    assert all("(1 more of this cause in the last minute)" in line for line in lines[1:])
    assert broker.stats.heartbeats_sent == len(transport.heartbeats())


def test_request_heartbeat_sends_at_most_one_a_second() -> None:
    transport, clock = ManualTransport(), FakeClock()
    options = EventBrokerOptions(secret=SECRET, heartbeat_interval=30)
    with EventBroker(transport, options, clock=clock) as broker:
        wait_until(lambda: len(transport.heartbeats()) == 1)  # the hello
        broker.request_heartbeat()
        broker.request_heartbeat()
        clock.advance(0.5)
        broker.check_missed_events()  # a hop to the broker loop: the maintenance ran meanwhile
        assert len(transport.heartbeats()) == 1  # not before a second after the last
        clock.advance(0.5)
        wait_until(lambda: len(transport.heartbeats()) == 2)
        clock.advance(5)
        broker.check_missed_events()
        assert len(transport.heartbeats()) == 2  # one request, one heartbeat
        assert transport.heartbeats()[1]["kind"] == "presence"
