"""The local stack's TLS: a certificate authority of its own, a server certificate for loopback it signs, and a
server that answers HTTPS only, verified by a client that trusts that authority and nothing else."""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from aws_emulators.sagemaker.server import LocalSageMaker, make_handler, serve_tls
from cryptography import x509

from local.tls import ensure_tls


def test_the_server_certificate_is_for_loopback_signed_by_the_stacks_authority(tmp_path: Path) -> None:
    material = ensure_tls(tmp_path / "tls")
    authority = x509.load_pem_x509_certificate(material.authority.read_bytes())
    certificate = x509.load_pem_x509_certificate(material.certificate.read_bytes())
    certificate.verify_directly_issued_by(authority)
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert authority.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert material.key.stat().st_mode & 0o077 == 0, "the key is the owner's alone"
    before = material.certificate.read_bytes()
    assert ensure_tls(tmp_path / "tls").certificate.read_bytes() == before, "kept across restarts"


def test_the_local_sagemaker_answers_https_to_a_client_trusting_the_authority_and_nothing_over_http(
    tmp_path: Path,
) -> None:
    from http.server import ThreadingHTTPServer

    material = ensure_tls(tmp_path / "tls")
    service = LocalSageMaker(tmp_path / "state")
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(service))
    serve_tls(server, material.certificate, material.key)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        trusting = ssl.create_default_context(cafile=str(material.authority))
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
