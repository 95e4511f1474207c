"""placeholder"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class AdminServer:
    def __init__(self, broker: Any, host: str, port: int) -> None:
        self.server = ThreadingHTTPServer((host, port), BaseHTTPRequestHandler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
