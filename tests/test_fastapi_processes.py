"""Two uvicorn processes of a FastAPI app on the Starlette integration, sharing real Redis and
the loopback Service Bus: a write through one is fresh on the other; SIGTERM stops each one
cleanly and leaves no subscription behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from eventbroker.testing import LoopbackServiceBus

from ._support import wait_until
from .servicebus_support import TOPIC

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Uvicorn:
    """``python -m uvicorn tests.fastapi_app:app`` in its own process."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"{name}.log"
        with self.log_path.open("w") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "tests.fastapi_app:app",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--log-level",
                    "info",
                ],
                cwd=ROOT,
                env={**env, "TEST_INSTANCE": name},
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_healthy(self, client: httpx.Client) -> None:
        def healthy() -> bool:
            assert self.proc.poll() is None, f"{self.name} exited:\n{self.log()}"
            try:
                return client.get(f"{self.url}/healthz").json()["status"] == "ok"
            except httpx.HTTPError:
                return False

        wait_until(healthy, timeout=60)

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def key_prefix() -> Iterator[str]:
    prefix = f"test-fastapi:{uuid.uuid4().hex}:"
    yield prefix
    direct = redis.Redis(host="127.0.0.1", port=6379)
    for key in direct.scan_iter(f"{prefix}*"):
        direct.delete(key)
    direct.close()


def test_two_uvicorn_processes_share_redis_and_service_bus_and_stop_on_sigterm(
    servicebus_broker: LoopbackServiceBus, key_prefix: str, tmp_path: Path
) -> None:
    bus = servicebus_broker
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EVENTBROKER_", "CACHE_"))}
    env.update(
        EVENTBROKER_SECRET="fastapi-processes-secret-0123",
        EVENTBROKER_APPLICATION_NAME="shop",
        EVENTBROKER_SERVICEBUS_CONNECTION_STRING=bus.connection_string,
        EVENTBROKER_SERVICEBUS_ADMINISTRATION_ENDPOINT=bus.admin_endpoint,
        EVENTBROKER_SERVICEBUS_TOPIC=TOPIC,
        EVENTBROKER_SERVICEBUS_RECONNECT_INITIAL_BACKOFF="0.05",
        EVENTBROKER_SERVICEBUS_RECONNECT_MAX_BACKOFF="0.5",
        CACHE_REDIS_URL="redis://127.0.0.1:6379/0",
        CACHE_REDIS_KEY_PREFIX=key_prefix,
        CACHE_DEFAULT_DURATION="300",  # nothing expires by itself during the test
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    servers = [Uvicorn(name, env, tmp_path) for name in ("web-1", "web-2")]
    try:
        with httpx.Client(timeout=10) as client:
            for server in servers:
                server.wait_healthy(client)
            web1, web2 = (server.url for server in servers)
            names = {client.get(f"{url}/subscription").json()["name"] for url in (web1, web2)}
            assert len(names) == 2 and names <= set(bus.subscription_names(TOPIC))

            # loaded once by web-1; web-2 finds it in Redis (the shared L2)
            assert client.get(f"{web1}/items/sku-1").json()["value"] == "loaded by web-1"
            assert client.get(f"{web2}/items/sku-1").json() == {
                "value": "loaded by web-1",
                "served_by": "web-2",
            }
            # web-2 now holds it in memory; a write through web-1 reaches it over Service Bus
            client.put(f"{web1}/items/sku-1", json={"value": "written through web-1"})
            wait_until(
                lambda: (
                    client.get(f"{web2}/items/sku-1").json()["value"] == "written through web-1"
                ),
                timeout=30,
            )

        for server in servers:
            status = server.terminate()
            log = server.log()
            # uvicorn re-raises SIGTERM once the lifespan's shutdown completed
            assert status in (0, -signal.SIGTERM), log
            # the lifespan's shutdown stopped the broker, which deleted its subscription
            assert "Application shutdown complete." in log, log
            assert log.index("Service Bus transport stopped") < log.index(
                "Application shutdown complete."
            ), log
            assert "Traceback" not in log and "failed" not in log, log
        assert bus.subscription_names(TOPIC) == []
    finally:
        for server in servers:
            server.kill()
