"""The one JSON reply every stand-in HTTP handler of the tests sends (stdlib only: the fake SGLang
server imports it in a subprocess without torch)."""
from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler


def send_json(handler: BaseHTTPRequestHandler, status: int, payload) -> None:
    """Answer the handler's request with ``status`` and ``payload`` as a JSON body."""
    data = json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)
