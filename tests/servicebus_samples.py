"""The azure-servicebus SDK's own samples against the loopback broker: what each sample needs
and must print, and one run of them all in the background.

Each sample gets its own entities (a queue, a queue that requires sessions, a topic with one
subscription) on one loopback broker in a child process, created through the administration
client, so the samples run side by side. Samples that only receive find messages waiting, as
if their ``send_*`` companion had run first. Most finish in seconds; ``auto_lock_renew*`` hold
messages for minutes by design (``time.sleep(100)``, several times), so the run starts as soon
as pytest has collected the samples test (``tests/conftest.py``) and overlaps the rest of the
suite, whose samples tests are collected last.

A sample is clean when it exits 0 with nothing on stderr (the SDK logs every error and warning
there), printed what it must, and left its entities as it must. Three samples receive forever
by design (``for message in receiver`` with no timeout): they are clean once they have drained
their queue, and are then stopped.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

ROOT = Path(__file__).resolve().parent.parent
SAMPLES_DIR = Path(__file__).resolve().parent / "azure_servicebus_samples"
VENDORED_VERSION = "7.15.0"
CONCURRENCY = 8
PREFILL = 10  # messages waiting for the samples that only receive
SESSION_ID = "session-1"


@attrs.frozen
class Sample:
    """What one sample needs and must show.

    ``prefill``: messages sent before it starts, to ``queue`` / ``topic`` (reaching
    ``subscription``) / ``session_queue:<session>`` / ``topic:<session>``. ``expect``: text its
    output must contain; ``expect_counts``: text that must occur exactly so often. ``after``:
    active messages each entity holds once it is done. ``forever``: it receives until stopped.
    ``session_subscription``: its subscription requires sessions.
    """

    path: str
    expect: tuple[str, ...] = ()
    expect_counts: tuple[tuple[str, int], ...] = ()
    prefill: tuple[tuple[str, int], ...] = ()
    after: tuple[tuple[str, int], ...] = ()
    forever: bool = False
    session_subscription: bool = False
    timeout: float = 300.0

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


def _both(stem: str, **spec: Any) -> list[Sample]:
    return [
        Sample(f"sync_samples/{stem}.py", **spec),
        Sample(f"async_samples/{stem}_async.py", **spec),
    ]


_RENEWED = (
    "Register messages into AutoLockRenewer done.",
    "Complete messages.",
    "Register session into AutoLockRenewer.",
    "Messages cannot be settled if they have timed out. (This is expected)",
    "Lock renew failure demonstration complete.",
    "Intentionally failed to renew lock on message due to None",
)
_PREFILLED = tuple(f"prefilled message {i}" for i in range(PREFILL))

SAMPLES: list[Sample] = [
    # long ones first: they start first
    # the last demonstration lets a lock expire on purpose: that message stays in the queue
    *_both(
        "auto_lock_renew", expect=_RENEWED, after=(("queue", 1), ("session_queue", 0)), timeout=900
    ),
    Sample(
        "sync_samples/sample_code_servicebus.py",
        expect=("b'minimal payload'", "Receiving: Hello World", "msg"),
    ),
    Sample("async_samples/sample_code_servicebus_async.py", expect=("Hello World", "msg")),
    *_both(
        "topic_subscription_with_rule_operations",
        expect=(
            "'9' Messages From Subscription: sb-allmsgs-sub",
            "'3' Messages From Subscription: sb-sqlfilteronly-sub",
            "'3' Messages From Subscription: sb-sqlfilteraction-sub",
            "'1' Messages From Subscription: sb-corrfiltersub",
            "Color Property = Red, Correlation ID = important",
        ),
        expect_counts=(("Color Property = BlueProcessed", 3), ("Color Property = Blue,", 3)),
    ),
    Sample(
        "sync_samples/session_pool_receive.py",
        expect=("Received total 200 messages across 10 sessions.",),
        after=(("session_queue", 0),),
    ),
    Sample(
        "async_samples/session_pool_receive_async.py",
        expect_counts=(("Message: Sample message no. 19", 5), ("Message: shutdown", 5)),
        after=(("session_queue", 0),),
    ),
    *_both(
        "deadletter_messages_and_correct",
        expect=(
            "Messages sent",
            "Message delivery_count: 9",  # the tenth delivery: then MaxDeliveryCountExceeded
            "Deadletter message:",
            "Fixing message:",
            "Received fixed message: Body=b'Message to be deadlettered number: 8', Subject=Good",
        ),
    ),
    *_both(
        "send_and_receive_amqp_annotated_message",
        expect=(
            "Message of data body received. Body is:",
            "Message of sequence body received. Body is:",
            "Message of value body received. Body is:",
            "{b'key': [-123, b'data', False]}",
        ),
    ),
    Sample(
        "sync_samples/failure_and_recovery.py",
        expect=("Opening", "Sending", "Receiving", *(f"Data {i}" for i in range(10))),
        after=(("queue", 0),),
        forever=True,
    ),
    *_both(
        "receive_iterator_queue",
        prefill=(("queue", PREFILL),),
        expect=_PREFILLED,
        after=(("queue", 0),),
        forever=True,
    ),
    *_both(
        "receive_queue", prefill=(("queue", PREFILL),), expect=_PREFILLED, after=(("queue", 0),)
    ),
    *_both(
        "receive_subscription",
        prefill=(("topic", PREFILL),),
        expect=_PREFILLED,
        after=(("subscription", 0),),
    ),
    *_both(
        "receive_peek",
        prefill=(("queue", PREFILL),),
        expect=_PREFILLED[:2],
        after=(("queue", PREFILL),),
    ),
    *_both(
        "receive_deadlettered_messages",
        expect=("dead lettering messages", "receiving deadlettered messages"),
        expect_counts=(("Message to be deadlettered", 20),),
        after=(("queue", 0),),
    ),
    *_both(
        "receive_deferred_message_queue",
        expect_counts=(
            ("Deferring msg: Message to be deferred", 10),
            ("Completing deferred msg: Message to be deferred", 10),
        ),
        after=(("queue", 0),),
    ),
    *_both(
        "schedule_messages_and_cancellation",
        expect=(
            "Single message is scheduled and sequence number is [1]",
            "Multiple messages are scheduled and sequence numbers are [2, 3, 4, 5, 6, 7, 8, 9, 10, 11]",
            "All scheduled messages are cancelled.",
        ),
        after=(("queue", 0),),
    ),
    *_both(
        "schedule_topic_messages_and_cancellation",
        expect=("All scheduled messages are cancelled.",),
        after=(("subscription", 0),),
    ),
    *_both(
        "session_send_receive",
        expect=("Session state: b'START'", "Session state: b'END'", "Receive is done."),
        expect_counts=(("Session Message in list", 9),),  # it receives 10 of 21 messages
    ),
    *_both(
        "list_sessions",
        prefill=(("session_queue:alpha", 1), ("session_queue:beta", 1), ("topic:gamma", 1)),
        expect=("Queue session: alpha", "Queue session: beta", "Subscription session: gamma"),
        session_subscription=True,
    ),
    *_both("send_queue", expect=("Send message is done.", "sent synchronized message")),
    *_both("send_topic", expect=("Send message is done.", "sent synchronized message")),
    *_both("mgmt_queue", expect=("-- Create Queue", "-- Delete Queue", "is deleted.")),
    *_both("mgmt_topic", expect=("-- Create Topic", "-- Delete Topic", "is deleted.")),
    *_both("mgmt_subscription", expect=("-- Create Subscription", "-- Delete Subscription")),
    *_both("mgmt_rule", expect=("-- Create Rule with SQL Filter", "-- Delete Rule")),
    *_both("authenticate_client_connstr"),
    *_both("authenticate_using_azure_named_key_credential", after=(("queue", 1),)),
    *_both("authenticate_using_azure_sas_credential", after=(("queue", 1),)),
    Sample("sync_samples/generate_sas_token_and_authenticate_client.py"),
]


@attrs.frozen
class Outcome:
    """How one sample ran."""

    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    drained: bool  # a sample that receives forever emptied its queue and was stopped
    after: dict[str, int]
    error: str = ""  # the run itself failed (not the sample)


@attrs.frozen
class _Names:
    queue: str
    session_queue: str
    topic: str
    subscription: str


def _names(index: int) -> _Names:
    return _Names(f"q{index}", f"sq{index}", f"t{index}", f"s{index}")


class SamplesRun:
    """Runs every sample once, in the background, `CONCURRENCY` at a time."""

    def __init__(self, samples: list[Sample]) -> None:
        self.samples = samples
        self._outcomes: dict[str, Outcome] = {}
        self._done = {s.path: threading.Event() for s in samples}
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._processes: set[subprocess.Popen[bytes]] = set()
        self._stopping = threading.Event()

    def start(self, samples: list[Sample] | None = None) -> None:
        """Start the run (once), of ``samples`` (default: all)."""
        with self._lock:
            if self._thread is None:
                if samples is not None:
                    self.samples = [s for s in self.samples if s in samples]
                self._thread = threading.Thread(
                    target=self._run, name="servicebus-samples", daemon=True
                )
                self._thread.start()

    def outcome(self, sample: Sample) -> Outcome:
        """Wait for ``sample`` (the run's own waits bound this) and return how it ran."""
        self.start([sample])
        if sample not in self.samples:
            return Outcome(None, "", "", 0.0, False, {}, "not in this run (started for others)")
        self._done[sample.path].wait(sample.timeout + 600)
        found = self._outcomes.get(sample.path)
        if found is None:
            return Outcome(None, "", "", 0.0, False, {}, "no outcome: the run did not finish")
        return found

    def stop(self) -> None:
        """Stop every sample still running, then the broker (with the run's thread)."""
        self._stopping.set()
        with self._lock:
            running = list(self._processes)
            thread = self._thread
        for process in running:
            with contextlib.suppress(OSError):
                process.kill()
        if thread is not None:
            thread.join(timeout=30)

    # ---- the run -------------------------------------------------------------------------
    def _run(self) -> None:
        from eventbroker.testing import broker_process

        try:
            with broker_process() as (connection_string, admin_endpoint):
                self._prepare(connection_string, admin_endpoint)
                with concurrent.futures.ThreadPoolExecutor(CONCURRENCY) as pool:
                    for index, sample in enumerate(self.samples):
                        pool.submit(self._run_one, index, sample, connection_string, admin_endpoint)
        except BaseException as exc:
            for sample in self.samples:
                if sample.path not in self._outcomes:
                    self._outcomes[sample.path] = Outcome(
                        None, "", "", 0.0, False, {}, f"the samples run failed: {exc!r}"
                    )
        finally:
            for event in self._done.values():
                event.set()

    def _prepare(self, connection_string: str, admin_endpoint: str) -> None:
        """Every sample's entities, and the messages the receiving samples expect."""
        from azure.servicebus import ServiceBusClient, ServiceBusMessage

        from eventbroker.testing import administration_client

        with administration_client(connection_string, admin_endpoint) as admin:
            for index, sample in enumerate(self.samples):
                names = _names(index)
                admin.create_queue(names.queue)
                admin.create_queue(names.session_queue, requires_session=True)
                admin.create_topic(names.topic)
                admin.create_subscription(
                    names.topic, names.subscription, requires_session=sample.session_subscription
                )
        with ServiceBusClient.from_connection_string(connection_string) as client:
            for index, sample in enumerate(self.samples):
                names = _names(index)
                for target, count in sample.prefill:
                    kind, _, session = target.partition(":")
                    messages = [
                        ServiceBusMessage(f"prefilled message {i}", session_id=session or None)
                        for i in range(count)
                    ]
                    if kind == "topic":
                        with client.get_topic_sender(names.topic) as sender:
                            sender.send_messages(messages)
                    else:
                        queue = names.queue if kind == "queue" else names.session_queue
                        with client.get_queue_sender(queue) as sender:
                            sender.send_messages(messages)

    def _run_one(
        self, index: int, sample: Sample, connection_string: str, admin_endpoint: str
    ) -> None:
        try:
            self._outcomes[sample.path] = self._execute(
                index, sample, connection_string, admin_endpoint
            )
        except Exception as exc:
            self._outcomes[sample.path] = Outcome(
                None, "", "", 0.0, False, {}, f"running the sample failed: {exc!r}"
            )
        finally:
            self._done[sample.path].set()

    def _execute(
        self, index: int, sample: Sample, connection_string: str, admin_endpoint: str
    ) -> Outcome:
        from eventbroker.testing import administration_client

        if self._stopping.is_set():
            return Outcome(None, "", "", 0.0, False, {}, "not run: the test session ended")
        names = _names(index)
        host_port = connection_string.split("sb://", 1)[1].split(";", 1)[0]
        env = dict(
            os.environ,
            SERVICEBUS_FULLY_QUALIFIED_NAMESPACE=host_port,
            SERVICEBUS_CONNECTION_STR=connection_string,
            SERVICEBUS_QUEUE_NAME=names.queue,
            SERVICEBUS_SESSION_QUEUE_NAME=names.session_queue,
            SERVICEBUS_TOPIC_NAME=names.topic,
            SERVICEBUS_SUBSCRIPTION_NAME=names.subscription,
            SERVICEBUS_SESSION_ID=SESSION_ID,
            SERVICEBUS_SAS_POLICY="loopback",
            SERVICEBUS_SAS_KEY="loopback",
            LOOPBACK_ADMIN_ENDPOINT=admin_endpoint,
            PYTHONUNBUFFERED="1",
        )
        command = [
            sys.executable,
            "-m",
            "tests.servicebus_sample_runner",
            str(SAMPLES_DIR / sample.path),
        ]
        began = time.monotonic()
        drained = False
        with (
            administration_client(connection_string, admin_endpoint) as admin,
            _output_file() as out,
            _output_file() as err,
        ):
            process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=err)
            with self._lock:
                self._processes.add(process)
            try:
                deadline = began + sample.timeout
                while process.poll() is None and time.monotonic() < deadline:
                    if self._stopping.is_set():
                        break
                    if sample.forever and _has_drained(sample, _read(out), admin, names):
                        drained = True
                        break
                    time.sleep(0.5)
                if process.poll() is None:
                    process.kill()
                process.wait(30)
            finally:
                with self._lock:
                    self._processes.discard(process)
            after = {entity: _active(admin, names, entity) for entity, _ in sample.after}
            return Outcome(
                None if drained else process.returncode,
                _read(out),
                _read(err),
                time.monotonic() - began,
                drained,
                after,
            )


@contextlib.contextmanager
def _output_file() -> Iterator[Any]:
    with tempfile.TemporaryFile() as handle:
        yield handle


def _read(handle: Any) -> str:
    handle.flush()
    handle.seek(0)
    data: bytes = handle.read()
    handle.seek(0, os.SEEK_END)
    return data.decode("utf-8", "replace")


def _active(admin: Any, names: _Names, entity: str) -> int:
    if entity == "subscription":
        props = admin.get_subscription_runtime_properties(names.topic, names.subscription)
    else:
        queue = names.queue if entity == "queue" else names.session_queue
        props = admin.get_queue_runtime_properties(queue)
    return int(props.active_message_count)


def _has_drained(sample: Sample, stdout: str, admin: Any, names: _Names) -> bool:
    """A sample that receives forever has printed all it must and emptied its entities."""
    if not all(text in stdout for text in sample.expect):
        return False
    return all(_active(admin, names, entity) == count for entity, count in sample.after)


def problems(sample: Sample, outcome: Outcome) -> list[str]:
    """Why ``outcome`` is not a clean run of ``sample`` (empty when it is)."""
    found = []
    if outcome.error:
        found.append(outcome.error)
    if sample.forever:
        if not outcome.drained:
            found.append(f"did not drain its queue within {sample.timeout:g} s")
    elif outcome.returncode != 0:
        found.append(f"exit status {outcome.returncode} after {outcome.seconds:.0f} s")
    if outcome.stderr.strip():
        found.append(f"stderr:\n{outcome.stderr[-4000:]}")
    missing = [text for text in sample.expect if text not in outcome.stdout]
    if missing:
        found.append(f"output lacks {missing!r}")
    for text, count in sample.expect_counts:
        seen = outcome.stdout.count(text)
        if seen != count:
            found.append(f"{text!r} printed {seen} times, not {count}")
    for entity, count in sample.after:
        if outcome.after.get(entity) != count:
            found.append(f"{entity} holds {outcome.after.get(entity)} messages, not {count}")
    if found and outcome.stdout:
        found.append(f"stdout (end):\n{outcome.stdout[-3000:]}")
    return found


SAMPLES_RUN = SamplesRun(SAMPLES)
