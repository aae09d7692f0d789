"""Test TLS material made with openssl: a CA and a server certificate for "oma.test" signed by it."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

SERVER_NAME = "oma.test"


@dataclass(frozen=True)
class TestPki:
    ca: Path
    cert: Path
    key: Path


def make_pki(directory: Path) -> TestPki:
    """CA (ca.pem) and a server certificate (oma.pem, oma.key) for SERVER_NAME, valid one day."""
    directory.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
            "-subj", "/CN=OMA test CA")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "oma.key", "-out", "oma.csr", "-subj",
            f"/CN={SERVER_NAME}")  # fmt: skip
    (directory / "san.cnf").write_text(f"subjectAltName=DNS:{SERVER_NAME},IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "oma.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out",
            "oma.pem", "-days", "1", "-extfile", "san.cnf")  # fmt: skip
    return TestPki(directory / "ca.pem", directory / "oma.pem", directory / "oma.key")
