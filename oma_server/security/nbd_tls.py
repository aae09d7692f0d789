"""TLS on the NBD data path: nbdkit serves with a certificate of the OMA's own CA and verifies every client's
certificate against that CA (`--tls-verify-peer`), so only a joined appliance (or the OMA itself) can list, read or
write an export.

What is written, in the NBD config dir:
- `tls/` — nbdkit's `--tls-certificates` directory in GnuTLS's layout: `ca-cert.pem`, `server-cert.pem` (the chain
  of a certificate for the names appliances dial the NBD port by) and `server-key.pem` (0600);
- `probe/` — the OMA's own client certificate and key, with which its supervisor's probe (`nbd/probe.py`) lists the
  exports over TLS like any client.

The appliances' side is the same CA: their client certificate of the join (`vma_client_stubs.identity` writes it in
libnbd's layout, `<identity dir>/nbd/`). Every appliance's certificate reaches every export — nbdkit checks the
chain, not which appliance the export is for; the README says what limits that.

Revocation: `tls/ca-crl.pem` is a CRL of the OMA's CA listing every revoked appliance certificate, which nbdkit
(GnuTLS) checks at every handshake — but reads only at its start, so a revocation rewrites the CRL and restarts
nbdkit (`NbdExportManager.reload_tls`; the other appliances' copies resume from their last acknowledged point).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from oma_server.security.ca import CLOCK_SKEW, CertificateAuthority, cert_pem, key_pem, server_names
from vma_client_stubs.secret_files import write_atomic, write_private

PROBE_URI = "urn:oma:internal:nbd-probe"
CRL_FILE = "ca-crl.pem"
PROBE_LIFETIME = timedelta(days=3650)  # the OMA's own, on its own disk; made again with the server certificate


@dataclass(frozen=True)
class NbdTls:
    """What the NBD server and the OMA's probe use. `required`: plaintext clients are refused; otherwise TLS is
    offered and verified but plaintext still served (an OMA that takes credential-hello appliances, which have no
    certificate)."""

    certificates_dir: Path
    required: bool
    probe_cert: Path
    probe_key: Path
    ca_file: Path

    def nbdkit_flags(self) -> list[str]:
        return [
            f"--tls={'require' if self.required else 'on'}",
            f"--tls-certificates={self.certificates_dir}",
            "--tls-verify-peer",
        ]

    def probe_context(self) -> ssl.SSLContext:
        """The probe's TLS: the server verified against the OMA's CA, the probe's own certificate presented."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.load_cert_chain(str(self.probe_cert), str(self.probe_key))
        return context


def write_crl(ca: CertificateAuthority, tls_dir: Path, revoked: list[tuple[str, datetime]]) -> bool:
    """Write `ca-crl.pem` listing `revoked` (hex serial, when); True if it changed what nbdkit should check."""
    path = tls_dir / CRL_FILE
    wanted = sorted(revoked)
    if path.exists():
        current = x509.load_pem_x509_crl(path.read_bytes())
        if sorted(format(r.serial_number, "x") for r in current) == [s for s, _ in wanted]:
            return False
    now = datetime.now(UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now - CLOCK_SKEW)
        .next_update(ca.cert.not_valid_after_utc)  # rewritten at every revocation; never stale before the CA
    )
    for serial, when in wanted:
        entry = x509.RevokedCertificateBuilder().serial_number(int(serial, 16))
        builder = builder.add_revoked_certificate(entry.revocation_date(when.replace(tzinfo=UTC)).build())
    write_atomic(path, builder.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    return True


def prepare_nbd_tls(
    ca: CertificateAuthority, config_dir: Path, listen: str, advertise: list[str], *, required: bool
) -> NbdTls:
    """Write nbdkit's certificates directory and the probe's certificate (see the module's docstring)."""
    names = server_names(listen, advertise)
    server = ca.server_credentials("nbd-server", names)
    tls_dir, probe_dir = config_dir / "tls", config_dir / "probe"
    for directory in (tls_dir, probe_dir):
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
    write_atomic(tls_dir / "ca-cert.pem", ca.pem)
    write_atomic(tls_dir / "server-cert.pem", server.chain_pem)
    write_private(tls_dir / "server-key.pem", server.key_pem)
    probe_cert, probe_key = probe_dir / "probe.crt", probe_dir / "probe.key"
    fresh = probe_cert.exists() and probe_key.exists()
    if fresh and not ca.signed_by_me(x509.load_pem_x509_certificate(probe_cert.read_bytes())):
        fresh = False  # made by an earlier CA of this data dir
    if not fresh:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = ca.issue_client_certificate(key.public_key(), "", PROBE_LIFETIME, uri=PROBE_URI)
        write_private(probe_key, key_pem(key))
        write_atomic(probe_cert, cert_pem(cert))
    return NbdTls(tls_dir, required, probe_cert, probe_key, tls_dir / "ca-cert.pem")
