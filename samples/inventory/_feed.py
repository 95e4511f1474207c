"""The external inventory system the demo starts itself: a small HTTP feed on loopback.

* ``GET /inventory.csv``: the full stock list as CSV (``sku,name,stock,price``), with a couple
  of deliberately bad rows; stock levels change with each `generation`.
* ``GET /incoming/{sku}``: live data for one product (next delivery), JSON.
* ``POST /control``: ``{"generation": n, "failing": bool}`` (the demo drives a feed that runs
  in another process this way).

While `failing` is set every request answers 503, as a system under maintenance would.
"""

from __future__ import annotations

import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

PRODUCTS = (
    ("SKU-001", "Trail running shoe"),
    ("SKU-002", "Rain jacket"),
    ("SKU-003", "Merino socks"),
    ("SKU-004", "Headlamp"),
    ("SKU-005", "Water bottle"),
    ("SKU-006", "Day pack 20 l"),
    ("SKU-007", "Trekking poles"),
    ("SKU-008", "Sun cap"),
    ("SKU-009", "Fleece mid-layer"),
    ("SKU-010", "Gaiters"),
    ("SKU-011", "First-aid kit"),
    ("SKU-012", "Compass"),
)


def stock_level(index: int, generation: int) -> int:
    """Stock of product `index` at `generation`: two in three products change per generation."""
    moves = sum(1 for g in range(2, generation + 1) if (index + g) % 3 != 0)
    return 10 + (index * 7) % 23 + 5 * moves


def price_cents(index: int) -> int:
    return 990 + index * 250


def inventory_csv(generation: int) -> str:
    """The feed's CSV for `generation`, including two bad rows (validation must skip them)."""
    lines = ["sku,name,stock,price"]
    for i, (sku, name) in enumerate(PRODUCTS):
        lines.append(f"{sku},{name},{stock_level(i, generation)},{price_cents(i) / 100:.2f}")
        if i == 3:
            lines.append("SKU-099,Broken scale,-4,12.00")  # negative stock
        if i == 7:
            lines.append("sku 13,Tent,3,199.00")  # malformed sku
    return "\n".join(lines) + "\n"


def incoming(sku: str, generation: int) -> dict[str, Any] | None:
    for i, (known, _) in enumerate(PRODUCTS):
        if known == sku:
            return {"sku": sku, "incoming": (i * 3 + generation) % 12, "eta_days": 1 + i % 5}
    return None


class InventoryFeed:
    """Serves the feed on ``127.0.0.1:port`` (0 picks a free port) from a background thread."""

    def __init__(self, port: int = 0, *, generation: int = 1) -> None:
        self.generation = generation
        self.failing = False
        self.requests = 0
        feed = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                log.debug("feed: " + format, *args)

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _json(self, status: int, payload: object) -> None:
                self._send(status, json.dumps(payload).encode(), "application/json")

            def do_GET(self) -> None:
                feed.requests += 1
                if feed.failing:
                    self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "maintenance"})
                elif self.path == "/inventory.csv":
                    body = inventory_csv(feed.generation).encode()
                    self._send(HTTPStatus.OK, body, "text/csv; charset=utf-8")
                elif self.path.startswith("/incoming/"):
                    data = incoming(self.path.removeprefix("/incoming/"), feed.generation)
                    self._json(HTTPStatus.OK if data else HTTPStatus.NOT_FOUND, data or {})
                else:
                    self._json(HTTPStatus.NOT_FOUND, {"error": "no such path"})

            def do_POST(self) -> None:
                if self.path != "/control":
                    self._json(HTTPStatus.NOT_FOUND, {"error": "no such path"})
                    return
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                if "generation" in body:
                    feed.generation = int(body["generation"])
                if "failing" in body:
                    feed.failing = bool(body["failing"])
                self._json(HTTPStatus.OK, {"generation": feed.generation, "failing": feed.failing})

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread: threading.Thread | None = None

    def start(self) -> InventoryFeed:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="inventory-feed",
            daemon=True,
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve on the calling thread (the feed as its own process)."""
        self._server.serve_forever()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> InventoryFeed:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
