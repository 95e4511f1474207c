"""The operator CLI (`python -m eventbroker`) as subprocesses against the loopback Service Bus,
next to app instances in their own processes (tests/cli_peer.py)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.core.credentials import AccessToken

from eventbroker.servicebus import ServiceBusOptions
from eventbroker.servicebus._admin import admin_client
from eventbroker.testing import LoopbackServiceBus

from .servicebus_support import free_port

ROOT = Path(__file__).resolve().parent.parent
TOPIC = "events"
SECRET = "cli-tests-secret-0123456789abcdef"
OTHER_SECRET = "not-the-same-secret-0123456789ab"
KEY = "loopback-key-for-the-cli-tests-0123456789abcdef"
WRONG_KEY = "a-wrong-key-for-the-cli-tests-0123456789abcdef"
EVENT = "7e57c0de-0000-4000-8000-0000000000e1"
CLI_RAISER = "e7e4b0c1-0000-4000-8000-00000000c11e"
HIDDEN = (SECRET, OTHER_SECRET, KEY, WRONG_KEY)


class Clock:
    """The loopback broker's clock: real time plus an offset the test sets."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def bus(clock: Clock) -> Iterator[LoopbackServiceBus]:
    broker = LoopbackServiceBus(shared_access_key=KEY, clock=clock)
    broker.start()
    broker.create_topic(TOPIC)
    try:
        yield broker
    finally:
        broker.stop()


def settings(bus: LoopbackServiceBus, **extra: str) -> dict[str, str]:
    """The environment of an app (and of the CLI) pointed at `bus`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTBROKER_")}
    env.update(
        EVENTBROKER_SECRET=SECRET,
        EVENTBROKER_APPLICATION_NAME="shop",
        EVENTBROKER_SERVICEBUS_CONNECTION_STRING=bus.connection_string,
        EVENTBROKER_SERVICEBUS_ADMINISTRATION_ENDPOINT=bus.admin_endpoint,
        EVENTBROKER_SERVICEBUS_TOPIC=TOPIC,
        EVENTBROKER_SERVICEBUS_RECONNECT_INITIAL_BACKOFF="0.05",
        EVENTBROKER_SERVICEBUS_RECONNECT_MAX_BACKOFF="0.5",
        EVENTBROKER_SERVICEBUS_SDK_RETRY_TOTAL="0",
    )
    env.update(extra)
    return env


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in HIDDEN:
            assert secret not in text


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "eventbroker", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert_no_secret(done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def records(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def checks(text: str) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in records(text) if r["type"] == "check"}


def next_record(process: subprocess.Popen[str], kind: str) -> dict[str, Any]:
    """The next JSON line of `kind` a streaming command prints (earlier ones are skipped)."""
    assert process.stdout is not None
    for line in process.stdout:
        assert_no_secret(line)
        record: dict[str, Any] = json.loads(line)
        if record["type"] == kind:
            return record
    raise AssertionError(f"the command ended before printing a {kind!r} line")


def next_line(process: subprocess.Popen[str], containing: str) -> str:
    assert process.stdout is not None
    for line in process.stdout:
        assert_no_secret(line)
        if containing in line:
            return line
    raise AssertionError(f"the command ended before printing {containing!r}")


@contextlib.contextmanager
def app_instance(env: dict[str, str]) -> Iterator[tuple[str, str]]:
    """An app instance in its own process: (instance id, subscription); stopped at the end."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.cli_peer"],
        env=env,
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        instance, subscription = next_line(process, "READY ").split()[1:]
        yield instance, subscription
    finally:
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def streaming(env: dict[str, str], *args: str) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "eventbroker", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# -- listen and raise --------------------------------------------------------------------------


def test_listen_prints_events_from_other_processes_and_refusals_and_stops_cleanly(
    bus: LoopbackServiceBus,
) -> None:
    env = settings(bus)
    with streaming(env, "listen", "--json") as listener, streaming(env, "listen") as person:
        listening = next_record(listener, "listening")
        assert listening["topic"] == TOPIC and listening["application_name"] == "shop"
        next_line(person, "listening to 'shop'")
        assert listening["subscription"] in bus.subscription_names(TOPIC)

        raised = cli(env, "raise", EVENT, "--param", '{"sku": "A-1", "stock": 3}', "--json")
        assert raised.returncode == 0, raised.stderr
        [sent] = records(raised.stdout)
        event = next_record(listener, "event")
        assert event["event_id"] == EVENT and event["raiser_id"] == CLI_RAISER
        assert event["param"] == {"sku": "A-1", "stock": 3}
        assert event["source_instance_id"] == sent["instance_id"]
        assert event["message_id"] == sent["message_id"] and event["sequence"] == 1
        assert event["source_host"] == socket.gethostname()
        assert isinstance(event["lag"], float)
        line = next_line(person, f"event {EVENT}")
        assert f"raiser {CLI_RAISER}" in line and '{"sku":"A-1","stock":3}' in line
        assert f"from {socket.gethostname()}/{sent['instance_id'][:8]}" in line

        stranger = cli(settings(bus, EVENTBROKER_SECRET=OTHER_SECRET), "raise", EVENT, "--json")
        assert stranger.returncode == 0, stranger.stderr
        [strange] = records(stranger.stdout)
        refused = next_record(listener, "refused")
        assert refused["reason"] == "unknown_key"
        assert refused["sender"]["instance_id"] == strange["instance_id"]
        assert "REFUSED unknown_key" in next_line(person, "REFUSED")

        bus.inject(TOPIC, b"\x1b[31mnot an envelope")
        malformed = next_record(listener, "refused")
        while malformed["reason"] == "unknown_key":  # the stranger's heartbeats
            malformed = next_record(listener, "refused")
        assert malformed["reason"] == "malformed" and malformed["sender"] == {}

        listener.send_signal(signal.SIGTERM)
        person.send_signal(signal.SIGINT)
        stopped = next_record(listener, "stopped")
        assert stopped["events"] == 1 and stopped["refused"] >= 2
        assert listener.wait(30) == 0 and person.wait(30) == 0
        assert listener.stderr is not None and person.stderr is not None
        assert_no_secret(listener.stderr.read(), person.stderr.read())
    assert bus.subscription_names(TOPIC) == []  # both temporary subscriptions deleted


def test_raise_reaches_an_app_instance_and_listen_can_stop_after_a_count(
    bus: LoopbackServiceBus,
) -> None:
    env = settings(bus)
    with streaming(env, "listen", "--json", "--count", "1", "--timeout", "60") as listener:
        next_record(listener, "listening")
        with app_instance(env):
            done = cli(env, "raise", EVENT, "--param", "[1, 2]", "--raiser", EVENT)
            assert done.returncode == 0, done.stderr
            assert done.stdout.startswith(f"raised event {EVENT} (raiser {EVENT}")
        assert next_record(listener, "event")["param"] == [1, 2]
        assert listener.wait(30) == 0  # --count reached
    with streaming(env, "listen", "--json", "--count", "1", "--timeout", "0.5") as listener:
        assert listener.wait(30) == 1  # --timeout first: nothing found


def test_usage_and_configuration_errors_exit_2_and_name_the_fix(bus: LoopbackServiceBus) -> None:
    env = settings(bus)
    bad_uuid = cli(env, "raise", "not-a-uuid")
    assert bad_uuid.returncode == 2 and "is not a UUID" in bad_uuid.stderr
    bad_param = cli(env, "raise", EVENT, "--param", "{sku: 1}")
    assert bad_param.returncode == 2 and "--param is not JSON" in bad_param.stderr
    no_servicebus = {k: v for k, v in env.items() if "SERVICEBUS" not in k}
    missing = cli(no_servicebus, "listen")
    assert missing.returncode == 2
    assert "EVENTBROKER_SERVICEBUS_CONNECTION_STRING" in missing.stderr
    no_secret = {k: v for k, v in env.items() if k != "EVENTBROKER_SECRET"}
    assert "EVENTBROKER_SECRET" in cli(no_secret, "instances").stderr
    wrong_key = bus.connection_string.replace(KEY, WRONG_KEY)
    refused = cli(settings(bus, EVENTBROKER_SERVICEBUS_CONNECTION_STRING=wrong_key), "raise", EVENT)
    assert refused.returncode == 2
    assert "check SharedAccessKeyName and SharedAccessKey" in refused.stderr
    port, admin_port = free_port(), free_port()
    down = settings(
        bus,
        EVENTBROKER_SERVICEBUS_CONNECTION_STRING=bus.connection_string.replace(
            f":{bus.port};", f":{port};"
        ),
        EVENTBROKER_SERVICEBUS_ADMINISTRATION_ENDPOINT=f"http://127.0.0.1:{admin_port}",
    )
    unreachable = cli(down, "raise", EVENT, "--connect-timeout", "1")
    assert unreachable.returncode == 3 and "not connected to Service Bus" in unreachable.stderr


# -- instances ---------------------------------------------------------------------------------


def test_instances_lists_a_running_app_process_with_its_lag(bus: LoopbackServiceBus) -> None:
    env = settings(bus, EVENTBROKER_HEARTBEAT_INTERVAL="0.5")
    with app_instance(env) as (instance, _):
        done = cli(env, "instances", "--wait", "2", "--json")
        assert done.returncode == 0, done.stderr
        [info] = records(done.stdout)
        assert info["instance_id"] == instance and info["host"] == socket.gethostname()
        assert info["application_name"] == "shop" and info["heartbeat_interval"] == 0.5
        assert isinstance(info["heartbeat_lag"], float) and info["last_seen_ago"] >= 0
        table = cli(env, "instances", "--wait", "1.5")
        assert table.returncode == 0, table.stderr
        assert "HOST" in table.stdout and "LAST SEEN" in table.stdout and instance in table.stdout
    nobody = cli(env, "instances", "--wait", "1")
    assert nobody.returncode == 1 and "0 instance(s) of 'shop' heard" in nobody.stdout


# -- doctor ------------------------------------------------------------------------------------


def test_doctor_passes_on_a_good_configuration_next_to_a_running_instance(
    bus: LoopbackServiceBus,
) -> None:
    env = settings(bus, EVENTBROKER_HEARTBEAT_INTERVAL="0.5")
    with app_instance(env) as (instance, _):
        done = cli(env, "doctor", "--wait", "2", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    found = checks(done.stdout)
    assert list(found) == [
        "configuration",
        "reachable",
        "credentials",
        "manage",
        "listen",
        "send",
        "round_trip",
        "secret",
        "refusals",
        "cleanup",
    ]
    assert {c["status"] for c in found.values()} == {"OK"}
    assert instance[:8] in found["secret"]["detail"]
    assert records(done.stdout)[-1] == {"type": "summary", "ok": True, "failed": []}
    assert bus.subscription_names(TOPIC) == []  # the probes cleaned up


def test_doctor_fails_on_a_wrong_key_with_the_fix(bus: LoopbackServiceBus) -> None:
    wrong = bus.connection_string.replace(KEY, WRONG_KEY)
    env = settings(bus, EVENTBROKER_SERVICEBUS_CONNECTION_STRING=wrong)
    done = cli(env, "doctor", "--wait", "0")
    assert done.returncode == 1
    assert "OK    reachable" in done.stdout
    assert "FAIL  credentials" in done.stdout and "InvalidSignature" in done.stdout
    assert "fix: copy the connection string again" in done.stdout
    assert "SKIP  listen" in done.stdout
    assert done.stdout.rstrip().endswith("1 check(s) failed: credentials")


def test_doctor_fails_on_an_unreachable_namespace_with_the_fix(bus: LoopbackServiceBus) -> None:
    port, admin_port = free_port(), free_port()
    env = settings(
        bus,
        EVENTBROKER_SERVICEBUS_CONNECTION_STRING=bus.connection_string.replace(
            f":{bus.port};", f":{port};"
        ),
        EVENTBROKER_SERVICEBUS_ADMINISTRATION_ENDPOINT=f"http://127.0.0.1:{admin_port}",
    )
    done = cli(env, "doctor", "--json")
    assert done.returncode == 1
    found = checks(done.stdout)
    assert found["configuration"]["status"] == "OK"
    assert found["reachable"]["status"] == "FAIL"
    assert f"127.0.0.1:{port}" in found["reachable"]["detail"]
    assert "check the namespace name" in found["reachable"]["fix"]
    assert {found[name]["status"] for name in list(found)[2:]} == {"SKIP"}


def test_doctor_finds_an_instance_with_another_secret(bus: LoopbackServiceBus) -> None:
    with app_instance(
        settings(bus, EVENTBROKER_SECRET=OTHER_SECRET, EVENTBROKER_HEARTBEAT_INTERVAL="0.5")
    ) as (instance, _):
        done = cli(settings(bus), "doctor", "--wait", "2", "--json")
    assert done.returncode == 1
    found = checks(done.stdout)
    assert found["round_trip"]["status"] == "OK"  # this configuration works by itself
    assert found["secret"]["status"] == "FAIL"
    assert instance in found["secret"]["detail"]
    assert "EVENTBROKER_SECRET differs between instances" in found["secret"]["fix"]
    assert records(done.stdout)[-1]["failed"] == ["secret"]


def test_doctor_reports_a_configuration_that_does_not_load(bus: LoopbackServiceBus) -> None:
    env = settings(bus, EVENTBROKER_SECRET="short")
    done = cli(env, "doctor", "--json")
    assert done.returncode == 1
    found = checks(done.stdout)
    assert found["configuration"]["status"] == "FAIL"
    assert "at least 16 characters" in found["configuration"]["detail"]
    assert found["reachable"]["status"] == "SKIP"


# -- subscriptions -----------------------------------------------------------------------------


def test_subscriptions_list_shows_idle_time_message_counts_and_whose_they_are(
    bus: LoopbackServiceBus,
) -> None:
    env = settings(bus)
    bus.create_subscription(TOPIC, "billing-worker")  # another application's
    bus.inject(TOPIC, b"one")
    bus.inject(TOPIC, b"two")
    with app_instance(env) as (_, subscription):
        bus.inject(TOPIC, b"three")
        done = cli(env, "subscriptions", "list", "--json")
        assert done.returncode == 0, done.stderr
        rows = {r["name"]: r for r in records(done.stdout)}
        people = cli(env, "subscriptions", "list")
    assert set(rows) == {subscription, "billing-worker"}
    ours, theirs = rows[subscription], rows["billing-worker"]
    assert ours["this_application"] and not theirs["this_application"]
    assert theirs["active_messages"] >= 3 and theirs["total_messages"] >= 3  # + heartbeats
    assert ours["auto_delete_on_idle"] == 1800
    assert 0 <= ours["idle_seconds"] < 60
    assert "SUBSCRIPTION" in people.stdout and "billing-worker" in people.stdout


def test_prune_removes_a_stale_subscription_and_keeps_a_running_instances_one(
    bus: LoopbackServiceBus, clock: Clock
) -> None:
    clock.offset = -7200  # the broker's clock runs 2 h late: every subscription looks idle
    env = settings(bus, EVENTBROKER_HEARTBEAT_INTERVAL="0.5")
    bus.create_subscription(TOPIC, "oldhost-shop-0badc0de")  # a crashed instance's
    bus.create_subscription(TOPIC, "billing-worker")  # another application's
    with app_instance(env) as (instance, live):
        trial = cli(env, "subscriptions", "prune", "--wait", "2", "--dry-run", "--json")
        assert trial.returncode == 0, trial.stderr
        planned = {r["name"]: r for r in records(trial.stdout)}
        assert planned["oldhost-shop-0badc0de"]["action"] == "would_delete"
        assert planned[live]["action"] == "kept"
        assert planned[live]["instance_id"] == instance
        assert "is running" in planned[live]["reason"]
        assert "billing-worker" not in planned
        assert "oldhost-shop-0badc0de" in bus.subscription_names(TOPIC)

        done = cli(env, "subscriptions", "prune", "--wait", "2")
        assert done.returncode == 0, done.stderr
        assert "deleted       oldhost-shop-0badc0de  (idle for 2 h 0 min)" in done.stdout
        assert f"kept          {live}" in done.stdout
        assert sorted(bus.subscription_names(TOPIC)) == sorted(["billing-worker", live])


def test_prune_keeps_a_subscription_accessed_recently_whatever_its_age(
    bus: LoopbackServiceBus, clock: Clock
) -> None:
    env = settings(bus)
    clock.offset = -7200
    bus.create_subscription(TOPIC, "oldhost-shop-0badc0de")
    with app_instance(env) as (_, live):  # created 2 h ago by the broker's clock...
        clock.offset = 0  # ...and receiving since
        time.sleep(1.5)  # the loopback broker marks attached receivers accessed once a second
        done = cli(env, "subscriptions", "prune", "--wait", "0", "--json")
        assert done.returncode == 0, done.stderr
        actions = {r["name"]: (r["action"], r["reason"]) for r in records(done.stdout)}
        assert actions["oldhost-shop-0badc0de"][0] == "deleted"
        assert actions[live][0] == "kept" and "accessed" in actions[live][1]
        assert bus.subscription_names(TOPIC) == [live]


def test_the_commands_admin_client_takes_a_sync_credential_for_a_namespace(
    bus: LoopbackServiceBus,
) -> None:
    """With a managed identity the command reads the topic with azure-identity's sync
    `DefaultAzureCredential` (here a stand-in: the loopback broker accepts any such token)."""
    scopes: list[str] = []

    class Credential:
        def get_token(self, *wanted: str, **kwargs: Any) -> AccessToken:
            scopes.extend(wanted)
            return AccessToken("an-entra-id-token", int(time.time()) + 3600)

    options = ServiceBusOptions(
        fully_qualified_namespace="127.0.0.1",
        administration_endpoint=bus.admin_endpoint,
        topic=TOPIC,
    )
    client = admin_client(options, Credential())  # type: ignore[arg-type]
    try:
        assert client.get_topic(TOPIC).name == TOPIC
    finally:
        client.close()
    assert scopes == ["https://servicebus.azure.net//.default"]
