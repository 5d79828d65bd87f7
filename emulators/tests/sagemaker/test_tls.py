"""The local SageMaker over HTTPS only: a client trusting the certificate's authority is answered, one trusting
only the system's authorities is refused, and plain HTTP gets no answer."""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import urllib.error
import urllib.request
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from aws_emulators.sagemaker.server import LocalSageMaker, make_handler, serve_tls


def test_the_local_sagemaker_answers_https_to_a_client_trusting_the_authority_and_nothing_over_http(
    tmp_path: Path, test_authority: tuple[Path, Path, Path]
) -> None:
    authority, certificate, key = test_authority
    service = LocalSageMaker(tmp_path / "state")
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(service))
    serve_tls(server, certificate, key)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        trusting = ssl.create_default_context(cafile=str(authority))
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/health", context=trusting, timeout=5) as answer:
            assert json.loads(answer.read())["service"] == "local-sagemaker"
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            urllib.request.urlopen(f"https://127.0.0.1:{port}/health", timeout=5)  # the system's trust only
        with pytest.raises((urllib.error.URLError, http.client.HTTPException, ConnectionError)):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).read()
    finally:
        server.shutdown()
        service.endpoints.shutdown()
        service.store.close()
