"""Real Django processes (``python -m django ...``) on the test site, with Redis and the loopback
Service Bus: management commands and the runserver reloader's parent create no subscription,
serving processes delete theirs when they stop, and a write on one server is fresh on another.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from eventbroker.testing import LoopbackServiceBus

from ..cache.conftest import wait_until
from .testsite.settings import REDIS_URL

ROOT = Path(__file__).resolve().parents[2]
TOPIC = "django-site"
SETTINGS = "--settings=tests.contrib_django.testsite.settings"

pytestmark = pytest.mark.slow


@pytest.fixture
def bus(servicebus_broker: LoopbackServiceBus) -> LoopbackServiceBus:
    servicebus_broker.create_topic(TOPIC)
    return servicebus_broker


@pytest.fixture
def prefix() -> Iterator[str]:
    prefix = f"test-django-servers-{uuid.uuid4().hex}"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(match=f"django:{prefix}:*"):
        client.delete(key)
    client.close()


def _env(bus: LoopbackServiceBus, prefix: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EVENTBROKER_", "DJANGO_"))}
    return env | {
        "EVENTBROKER_SERVICEBUS_CONNECTION_STRING": bus.connection_string,
        "EVENTBROKER_SERVICEBUS_ADMINISTRATION_ENDPOINT": bus.admin_endpoint,
        "EVENTBROKER_SERVICEBUS_TOPIC": TOPIC,
        "EVENTBROKER_APPLICATION_NAME": "django-site",
        "TEST_DJANGO_KEY_PREFIX": prefix,
        "PYTHONUNBUFFERED": "1",
    }


def _django(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "django", *args, SETTINGS],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """``python -m django runserver`` in its own process group."""

    def __init__(self, env: dict[str, str], *, reload: bool = False) -> None:
        self.port = _free_port()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "django",
                "runserver",
                f"127.0.0.1:{self.port}",
                *([] if reload else ["--noreload"]),
                SETTINGS,
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    def call(self, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def wait_healthy(self) -> None:
        def healthy() -> bool:
            assert self.process.poll() is None, self.output()
            try:
                return self.call("/health/")[1]["status"] == "ok"
            except OSError:
                return False

        wait_until(healthy, timeout=60)

    def signal(self, signum: int) -> int:
        os.killpg(self.process.pid, signum)
        return self.process.wait(60)

    def signal_parent(self, signum: int) -> int:
        """Signal the runserver process alone (as ``docker stop`` or an IDE would)."""
        os.kill(self.process.pid, signum)
        code = self.process.wait(60)
        wait_until(lambda: self._group_gone(), timeout=60)
        return code

    def _group_gone(self) -> bool:
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return True
        return False

    def output(self) -> str:
        if self.process.poll() is None:
            return "(still running)"
        assert self.process.stdout is not None
        return self.process.stdout.read()

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def test_management_commands_create_no_subscription(bus: LoopbackServiceBus, prefix: str) -> None:
    env = _env(bus, prefix)
    check = _django("check", env=env)
    assert check.returncode == 0, check.stderr
    shell = _django(
        "shell", "-c", "from django.core.cache import cache; cache.set('k', 1)", env=env
    )
    assert shell.returncode == 0, shell.stderr
    assert "without a running event broker" in shell.stderr  # told, once
    assert bus.subscription_names(TOPIC) == []


@pytest.mark.parametrize(
    "stop",
    [
        pytest.param(lambda server: server.signal(signal.SIGINT), id="ctrl-c-to-the-group"),
        pytest.param(lambda server: server.signal_parent(signal.SIGTERM), id="sigterm-to-parent"),
    ],
)
def test_the_reloader_parent_creates_no_subscription_and_the_child_deletes_its_own(
    bus: LoopbackServiceBus, prefix: str, stop: Any
) -> None:
    server = Server(_env(bus, prefix), reload=True)
    try:
        server.wait_healthy()  # the child serves: its broker runs
        assert len(bus.subscription_names(TOPIC)) == 1  # the child's only
        stop(server)
        assert bus.subscription_names(TOPIC) == [], server.output()
    finally:
        server.kill()


def test_a_write_on_one_server_is_fresh_on_the_other(bus: LoopbackServiceBus, prefix: str) -> None:
    env = _env(bus, prefix)
    first, second = Server(env), Server(env)
    try:
        first.wait_healthy()
        second.wait_healthy()
        assert len(bus.subscription_names(TOPIC)) == 2
        assert first.call("/cache/price")[1]["found"] is False
        assert second.call("/cache/price/set", {"amount": 10})[0] == 200
        assert first.call("/cache/price")[1]["value"] == {"amount": 10}  # through Redis
        assert second.call("/cache/price/set", {"amount": 12})[0] == 200
        # the first server held 10 in memory, with no expiry: only the backplane can refresh it
        wait_until(lambda: first.call("/cache/price")[1]["value"] == {"amount": 12}, timeout=30)
        assert first.call("/cache/price/set", {"amount": 15})[0] == 200
        wait_until(lambda: second.call("/cache/price")[1]["value"] == {"amount": 15}, timeout=30)
        for server in (first, second):
            assert server.signal(signal.SIGTERM) == -signal.SIGTERM
        assert bus.subscription_names(TOPIC) == [], first.output() + second.output()
    finally:
        first.kill()
        second.kill()


def test_a_jobs_instance_runs_until_sigterm_and_deletes_its_subscription(
    bus: LoopbackServiceBus, prefix: str, tmp_path: Path
) -> None:
    env = _env(bus, prefix) | {
        "JOBS_RUN_SCHEDULER": "true",
        "EVENTBROKER_SCHEDULER": "tests.contrib_django.testsite.jobs.build_scheduler",
        "TEST_JOBS_FOLDER": str(tmp_path),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "django", "eventbroker_run", SETTINGS],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "event broker running with the job scheduler" in line, process.stderr
        assert len(bus.subscription_names(TOPIC)) == 1
        assert (tmp_path / "jobs.sqlite3").exists()
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
        assert "event broker stopped" in process.stdout.read()
        assert bus.subscription_names(TOPIC) == []
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
