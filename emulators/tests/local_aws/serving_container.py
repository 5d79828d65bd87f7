"""A serving container for the local SageMaker's process runtime, for tests of what hosts an endpoint rather than
of what it serves: it answers SageMaker's serving contract (``GET /ping``, ``POST /invocations`` echoing the body)
on the port SageMaker gives it, and says which model it serves (``MODEL_VERSION``) in each answer."""

from __future__ import annotations

import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Serving(BaseHTTPRequestHandler):
    def _answer(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("X-Model-Version", os.environ.get("MODEL_VERSION", ""))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer(b"")

    def do_POST(self) -> None:
        self._answer(self.rfile.read(int(self.headers.get("Content-Length") or 0)))


if __name__ == "__main__":
    host = os.environ.get("FHE_BIND_HOST") or os.environ.get("SAGEMAKER_BIND_HOST", "127.0.0.1")
    ThreadingHTTPServer((host, int(os.environ.get("SAGEMAKER_BIND_TO_PORT", "8080"))), Serving).serve_forever()
