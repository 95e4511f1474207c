"""Three OS processes, each an app instance with ServiceBusTransport, over the loopback broker."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from eventbroker.testing import LoopbackServiceBus

from .servicebus_support import TOPIC

ROOT = Path(__file__).resolve().parent.parent
NODES, COUNT = 3, 10


@pytest.fixture
def bus(servicebus_broker: LoopbackServiceBus) -> LoopbackServiceBus:
    return servicebus_broker


def _line(process: subprocess.Popen[str], prefix: str) -> str:
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith(prefix):
            return line[len(prefix) :].strip()
    raise AssertionError(f"process ended before printing {prefix!r}")


def test_three_processes_receive_every_other_broadcast_once(bus: LoopbackServiceBus) -> None:
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.servicebus_node",
                bus.connection_string,
                bus.admin_endpoint,
                str(index),
                str(NODES),
                str(COUNT),
            ],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for index in range(NODES)
    ]
    try:
        subscriptions = [_line(p, "READY ") for p in processes]
        assert set(subscriptions) <= set(bus.subscription_names(TOPIC))
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("GO\n")
            process.stdin.flush()
        for index, process in enumerate(processes):
            got = Counter(json.loads(_line(process, "RECEIVED ")))
            expected = Counter(
                f"{other}-{i}" for other in range(NODES) if other != index for i in range(COUNT)
            )
            assert got == expected
        for process in processes:
            _line(process, "STOPPED")
            assert process.wait(30) == 0
        assert not set(subscriptions) & set(bus.subscription_names(TOPIC))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


EXITING_APP = """
import atexit, sys, time
from eventbroker import EventBroker, EventBrokerOptions
from eventbroker.servicebus import ServiceBusOptions, ServiceBusTransport

options = ServiceBusOptions(
    connection_string=sys.argv[1], administration_endpoint=sys.argv[2], topic="events",
    subscription_check_interval=0.05, receive_wait=0.05,  # the loops keep calling Service Bus
)
broker = EventBroker(
    ServiceBusTransport(options), EventBrokerOptions(secret="x" * 20, application_name="shop")
)
broker.start()
if sys.argv[3] == "stop-at-exit":
    atexit.register(broker.stop)
atexit.register(time.sleep, 1.0)  # other exit handlers run first, while the loops go on
print("STARTED", broker.transport.subscription_name, flush=True)
"""


@pytest.mark.parametrize("how", ["exit-without-stop", "stop-at-exit"])
def test_exiting_with_a_started_broker_logs_no_executor_error(
    bus: LoopbackServiceBus, how: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", EXITING_APP, bus.connection_string, bus.admin_endpoint, how],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "cannot schedule new futures" not in done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    subscription = done.stdout.split()[1]
    if how == "stop-at-exit":
        assert subscription not in bus.subscription_names(TOPIC)
