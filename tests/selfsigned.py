"""A self-signed certificate for 127.0.0.1, made offline with ``openssl req``."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """(certificate, key), PEM files in ``directory``, valid one day for 127.0.0.1."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec"),
            *("-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def server_context(cert: Path, key: Path, tickets: int = 0) -> ssl.SSLContext:
    """A server context for ``cert``, issuing ``tickets`` TLS 1.3 session tickets: none by
    default, for the ``websockets`` client races on them ("TLS and the websockets
    client" in docs/test-suite.rst)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.num_tickets = tickets
    return context


def client_context(cert: Path, *, tls12: bool = False) -> ssl.SSLContext:
    """A client context that trusts ``cert`` and nothing else; ``tls12``: at most TLS 1.2,
    for a ``websockets`` client of a server that issues TLS 1.3 session tickets (TLS 1.2
    gives them inside the handshake, where the client does not race on them)."""
    context = ssl.create_default_context(cafile=str(cert))
    if tls12:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    return context
