"""Certificates for the tests' TLS servers, made with openssl in a directory of the test's own."""

from __future__ import annotations

import subprocess
from pathlib import Path


def _openssl(directory: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)


def authority(directory: Path, name: str = "ca") -> Path:
    """A self-signed certificate authority: NAME.crt and NAME.key; returns the certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl(directory, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN=test-{name}",
             "-keyout", f"{name}.key", "-out", f"{name}.crt")  # fmt: skip
    return directory / f"{name}.crt"


def signed(directory: Path, name: str, subject: str, alt_names: str | None = None, ca: str = "ca") -> Path:
    """NAME.crt and NAME.key, signed by the authority CA in the same directory (alt_names, e.g.
    "IP:127.0.0.1,DNS:localhost", for a server); returns the certificate."""
    _openssl(directory, "req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", f"{name}.key",
             "-out", f"{name}.csr")  # fmt: skip
    extra: list[str] = []
    if alt_names:
        (directory / f"{name}.cnf").write_text(f"subjectAltName={alt_names}\n")
        extra = ["-extfile", f"{name}.cnf"]
    _openssl(directory, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-days", "1", *extra, "-out", f"{name}.crt")  # fmt: skip
    return directory / f"{name}.crt"
