"""Appliances by certificate (issue #14): the join (join token + CSR, the OMA pinned by its CA fingerprint), mutual
TLS on the appliance port with the identity from the certificate, revocation, renewal, and what is refused.

Everything runs against a real in-process OMA with its default: certificates only, no credential hellos.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from oma.v1 import (
    access_pb2,
    access_pb2_grpc,
    appliance_identity_pb2,
    appliance_identity_pb2_grpc,
    appliance_pb2,
    appliance_pb2_grpc,
)
from oma_server.app import App
from oma_server.db.models import Appliance, ApplianceCertificate
from oma_server.security.ca import CertificateAuthority, cert_pem, key_pem, public_key_sha256
from oma_server.server import OmaServer
from tests.clients import oma_channel
from tests.conftest import VENV_BIN, make_settings
from tests.factories import RawStream, progress, seed_job
from tests.omactl.conftest import run_omactl, target_of
from vma.v1 import stream_pb2
from vma_client_stubs.errors import error_details_of
from vma_client_stubs.identity import (
    ApplianceIdentity,
    CertificateRenewer,
    IdentityError,
    JoinTicket,
    join,
    renew,
)
from vma_client_stubs.stream_client import AuthenticationError, StreamClient


@pytest.fixture
async def server(tmp_path: Path, database_url: str) -> AsyncIterator[OmaServer]:
    oma = OmaServer(App(make_settings(tmp_path, database_url, allow_credential_hello=False)))
    await oma.start()
    yield oma
    await oma.stop(grace=0.5)


@pytest.fixture
async def admin(server: OmaServer) -> AsyncIterator[grpc.aio.Channel]:
    async with oma_channel(server) as channel:
        yield channel


async def ticket_for(server: OmaServer, admin: grpc.aio.Channel, name: str) -> JoinTicket:
    reply = await appliance_pb2_grpc.ApplianceServiceStub(admin).EnrollAppliance(
        appliance_pb2.EnrollApplianceRequest(name=name)
    )
    return JoinTicket(f"127.0.0.1:{server.port}", reply.appliance.id, reply.join_token, reply.ca_fingerprint)


def streaming(identity: ApplianceIdentity, **kwargs: object) -> StreamClient:
    return StreamClient(
        identity.appliance_endpoint,
        identity.appliance_id,
        "",
        agent_version="test",
        channel_credentials=identity.channel_credentials,
        max_backoff_s=0.2,
        **kwargs,  # type: ignore[arg-type]
    )


async def refused_hello(channel: grpc.aio.Channel, **hello: object) -> grpc.aio.AioRpcError:
    """Open the stream, say Hello, and return how the OMA ended it (the test fails if it welcomed instead)."""
    stream = RawStream(channel)
    try:
        await stream.send(hello=stream_pb2.Hello(**hello))  # type: ignore[arg-type]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stream.recv()
        return err.value
    finally:
        await stream.close()


def mtls(identity: ApplianceIdentity) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(identity.appliance_endpoint, identity.channel_credentials())


def csr_of(key: ec.EllipticCurvePrivateKey) -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


async def test_enroll_join_and_stream_by_certificate(server: OmaServer, admin: grpc.aio.Channel) -> None:
    reply = await appliance_pb2_grpc.ApplianceServiceStub(admin).EnrollAppliance(
        appliance_pb2.EnrollApplianceRequest(name="vma-cert")
    )
    assert reply.credential == ""  # no bearer secret by default
    assert reply.join_token.startswith("oma-join_") and reply.join_token_expires_at.seconds > 0
    assert server.app.ca is not None and reply.ca_fingerprint == server.app.ca.fingerprint
    ticket = JoinTicket(f"127.0.0.1:{server.port}", reply.appliance.id, reply.join_token, reply.ca_fingerprint)

    identity = await join(ticket)
    assert identity.appliance_id == reply.appliance.id
    assert identity.appliance_endpoint == f"127.0.0.1:{server.appliance_port}"
    sans = identity.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [f"urn:oma:appliance:{identity.appliance_id}"]

    async with streaming(identity) as client:
        await client.wait_connected(10)
        shown = await appliance_pb2_grpc.ApplianceServiceStub(admin).GetAppliance(
            appliance_pb2.GetApplianceRequest(id=identity.appliance_id)
        )
        assert shown.appliance.connection_state == appliance_pb2.CONNECTION_STATE_CONNECTED
        assert shown.appliance.certificate_serial == format(identity.certificate.serial_number, "x")
        assert shown.appliance.session_id == client.session_id


async def test_the_join_token_is_good_once_and_a_lost_answer_is_retried(
    server: OmaServer, admin: grpc.aio.Channel
) -> None:
    ticket = await ticket_for(server, admin, "vma-once")
    assert server.tls is not None and server.tls.ca_pem is not None
    creds = grpc.ssl_channel_credentials(root_certificates=server.tls.ca_pem)
    key = ec.generate_private_key(ec.SECP256R1())
    async with grpc.aio.secure_channel(ticket.oma, creds) as channel:
        stub = appliance_identity_pb2_grpc.ApplianceIdentityServiceStub(channel)
        request = appliance_identity_pb2.JoinApplianceRequest(join_token=ticket.join_token, csr_pem=csr_of(key))
        first = await stub.JoinAppliance(request)
        again = await stub.JoinAppliance(request)  # the same key: the first answer was lost
        assert again.certificate_pem == first.certificate_pem
        other = ec.generate_private_key(ec.SECP256R1())
        with pytest.raises(grpc.aio.AioRpcError) as used:
            await stub.JoinAppliance(replace_csr(request, other))
        assert used.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error_details_of(used.value).reason == "JOIN_TOKEN_USED"
        assert ticket.join_token not in (used.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as invalid:
            await stub.JoinAppliance(
                appliance_identity_pb2.JoinApplianceRequest(join_token="oma-join_made-up", csr_pem=csr_of(other))
            )
        assert error_details_of(invalid.value).reason == "JOIN_TOKEN_INVALID"
        with pytest.raises(grpc.aio.AioRpcError) as bad_csr:
            await stub.JoinAppliance(
                appliance_identity_pb2.JoinApplianceRequest(join_token=ticket.join_token, csr_pem="not a CSR")
            )
        assert bad_csr.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_details_of(bad_csr.value).reason == "CSR_INVALID"


def replace_csr(
    request: appliance_identity_pb2.JoinApplianceRequest, key: ec.EllipticCurvePrivateKey
) -> appliance_identity_pb2.JoinApplianceRequest:
    return appliance_identity_pb2.JoinApplianceRequest(join_token=request.join_token, csr_pem=csr_of(key))


async def test_an_expired_join_token_and_a_wrong_pin_are_refused(server: OmaServer, admin: grpc.aio.Channel) -> None:
    ticket = await ticket_for(server, admin, "vma-late")
    await server.app.db.run(
        lambda: (
            Appliance.update(join_token_expires_at=server.app.clock.now() - timedelta(seconds=1))
            .where(Appliance.id == ticket.appliance_id)
            .execute()
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as late:
        await join(ticket)
    assert error_details_of(late.value).reason == "JOIN_TOKEN_EXPIRED"

    fresh = await ticket_for(server, admin, "vma-pinned")
    impostor = CertificateAuthority(Path(server.app.settings.data_dir) / "other-ca")
    with pytest.raises(IdentityError, match="does not present the OMA CA"):
        await join(replace(fresh, ca_fingerprint=impostor.fingerprint))
    identity = await join(fresh)  # the token was never sent to the wrong pin: it still works
    assert identity.appliance_id == fresh.appliance_id


async def test_the_appliance_port_refuses_no_foreign_or_expired_certificates(
    server: OmaServer, admin: grpc.aio.Channel, tmp_path: Path
) -> None:
    identity = await join(await ticket_for(server, admin, "vma-port"))
    foreign_ca = CertificateAuthority(tmp_path / "foreign")
    foreign_key = ec.generate_private_key(ec.SECP256R1())
    foreign_cert = foreign_ca.issue_client_certificate(foreign_key.public_key(), identity.appliance_id, timedelta(1))
    assert server.app.ca is not None
    expired_key = ec.generate_private_key(ec.SECP256R1())
    expired = server.app.ca.issue_client_certificate(
        expired_key.public_key(), identity.appliance_id, -timedelta(minutes=1)
    )

    def record_expired() -> None:  # issued and recorded like a real one: only its dates are wrong
        ApplianceCertificate.create(
            serial=format(expired.serial_number, "x"),
            appliance=identity.appliance_id,
            public_key_sha256=public_key_sha256(expired_key.public_key()),
            certificate_pem=cert_pem(expired).decode(),
            not_after=expired.not_valid_after_utc.replace(tzinfo=None),
        )

    await server.app.db.tx(record_expired)
    refused = {
        "no certificate": replace(identity, key_pem=b"", certificate_pem=b""),
        "a foreign CA's": replace(identity, key_pem=key_pem(foreign_key), certificate_pem=cert_pem(foreign_cert)),
        "an expired one": replace(identity, key_pem=key_pem(expired_key), certificate_pem=cert_pem(expired)),
    }
    for what, who in refused.items():
        creds = (
            grpc.ssl_channel_credentials(root_certificates=who.ca_pem) if not who.key_pem else who.channel_credentials()
        )
        async with grpc.aio.secure_channel(who.appliance_endpoint, creds) as channel:
            err = await refused_hello(channel, agent_version="test")
            assert err.code() == grpc.StatusCode.UNAVAILABLE, what  # the TLS handshake fails
    async with grpc.aio.insecure_channel(identity.appliance_endpoint) as plaintext:
        err = await refused_hello(plaintext, agent_version="test")
        assert err.code() == grpc.StatusCode.UNAVAILABLE


async def test_an_unrecorded_certificate_and_a_hello_for_another_appliance_are_refused(
    server: OmaServer, admin: grpc.aio.Channel
) -> None:
    a = await join(await ticket_for(server, admin, "vma-a"))
    b = await join(await ticket_for(server, admin, "vma-b"))
    async with mtls(a) as channel:
        err = await refused_hello(channel, appliance_id=b.appliance_id, agent_version="test")
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error_details_of(err).reason == "APPLIANCE_ID_MISMATCH"
    assert server.app.ca is not None
    key = ec.generate_private_key(ec.SECP256R1())
    unrecorded = server.app.ca.issue_client_certificate(key.public_key(), a.appliance_id, timedelta(days=1))
    forged = replace(a, key_pem=key_pem(key), certificate_pem=cert_pem(unrecorded))
    async with mtls(forged) as channel:
        err = await refused_hello(channel, agent_version="test")
        assert error_details_of(err).reason == "CERTIFICATE_UNKNOWN"


async def test_appliance_a_cannot_report_on_bs_job(server: OmaServer, admin: grpc.aio.Channel) -> None:
    a = await join(await ticket_for(server, admin, "vma-a"))
    b = await join(await ticket_for(server, admin, "vma-b"))
    job = await seed_job(server.app, b.appliance_id)
    async with mtls(a) as channel:
        stream = RawStream(channel)
        await stream.send(hello=stream_pb2.Hello(agent_version="test"))
        welcome = await stream.recv()
        assert welcome.WhichOneof("message") == "welcome"
        assert [c.job_id for c in welcome.welcome.open_jobs] == []  # B's job is not shown to A
        await stream.send(progress=progress(job, 1, 1024))
        error = await stream.recv_until("error")
        assert error.error.code == stream_pb2.STREAM_ERROR_CODE_FOREIGN_JOB and error.error.job_id == job.id
        await stream.close()
    after = await server.app.jobs.get(job.id)
    assert (after.last_sequence, after.bytes_done) == (0, 0)  # nothing of A's report was applied


async def test_revocation_ends_the_live_stream_and_refuses_the_next(server: OmaServer, admin: grpc.aio.Channel) -> None:
    identity = await join(await ticket_for(server, admin, "vma-revoked"))
    client = streaming(identity)
    await client.start(wait_connected=10)
    await appliance_pb2_grpc.ApplianceServiceStub(admin).RevokeAppliance(
        appliance_pb2.RevokeApplianceRequest(id=identity.appliance_id)
    )
    with pytest.raises(AuthenticationError, match="revoked"):
        await client.wait_closed()  # at once: the OMA ended the live stream
    await client.stop()
    rows = await server.app.db.run(
        lambda: list(ApplianceCertificate.select().where(ApplianceCertificate.appliance == identity.appliance_id))
    )
    assert rows and all(r.revoked_at is not None for r in rows)
    async with mtls(identity) as channel:
        err = await refused_hello(channel, agent_version="test")
        assert error_details_of(err).reason == "APPLIANCE_REVOKED"


async def test_renewal_over_the_appliance_port_keeps_the_stream_and_the_next_connection_uses_it(
    server: OmaServer, admin: grpc.aio.Channel, tmp_path: Path
) -> None:
    identity = await join(await ticket_for(server, admin, "vma-renew"))
    identity.save(tmp_path / "identity")
    renewer = CertificateRenewer(identity, tmp_path / "identity")
    async with streaming(identity, **{}) as client:
        client.channel_credentials = renewer.channel_credentials
        await client.wait_connected(10)
        session = client.session_id
        await renewer.renew_now()
        renewed = renewer.identity
        assert renewed.certificate.serial_number != identity.certificate.serial_number
        assert renewed.key_pem != identity.key_pem  # a new key, made on the appliance
        assert client.connected and client.session_id == session  # the stream stayed up
        saved = ApplianceIdentity.load(tmp_path / "identity")
        assert saved.certificate_pem == renewed.certificate_pem
        assert (tmp_path / "identity" / "appliance.key").stat().st_mode & 0o777 == 0o600
        # the renewer confirmed the new certificate: its predecessor is revoked, the stream it opened stays up
        old = await certificate_row(server, identity)
        assert old.revoked_at is not None and old.superseded_by == format(renewed.certificate.serial_number, "x")
        assert client.connected and client.session_id == session
    async with mtls(identity) as channel:
        err = await refused_hello(channel, agent_version="test")
        assert error_details_of(err).reason == "CERTIFICATE_SUPERSEDED", err.details()
        assert format(renewed.certificate.serial_number, "x") in (err.details() or "")
    async with streaming(saved) as again:
        await again.wait_connected(10)
    shown = await appliance_pb2_grpc.ApplianceServiceStub(admin).GetAppliance(
        appliance_pb2.GetApplianceRequest(id=identity.appliance_id)
    )
    assert shown.appliance.certificate_serial == format(renewed.certificate.serial_number, "x")
    async with grpc.aio.secure_channel(f"127.0.0.1:{server.port}", grpc.ssl_channel_credentials(identity.ca_pem)) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:  # no client certificate on the operator port
            await appliance_identity_pb2_grpc.ApplianceIdentityServiceStub(ch).RenewApplianceCertificate(
                appliance_identity_pb2.RenewApplianceCertificateRequest(
                    csr_pem=csr_of(ec.generate_private_key(ec.SECP256R1()))
                )
            )
        assert error_details_of(err.value).reason == "CERTIFICATE_MISSING"


async def certificate_row(server: OmaServer, identity: ApplianceIdentity) -> ApplianceCertificate:
    serial = format(identity.certificate.serial_number, "x")
    return await server.app.db.run(ApplianceCertificate.get_by_id, serial)


async def test_a_hello_with_a_renewed_certificate_retires_its_predecessor_and_confirming_again_is_harmless(
    server: OmaServer, admin: grpc.aio.Channel
) -> None:
    first = await join(await ticket_for(server, admin, "vma-unconfirmed"))
    renewed = await renew(first)  # the answer arrived but no confirmation was sent (the appliance stopped)
    assert (await certificate_row(server, first)).revoked_at is None  # until the new one is in use, the old works
    async with streaming(first) as old_stream:
        await old_stream.wait_connected(10)
    async with streaming(renewed) as new_stream:  # the first use of the renewal retires its predecessor
        await new_stream.wait_connected(10)
    assert (await certificate_row(server, first)).superseded_by == format(renewed.certificate.serial_number, "x")
    async with mtls(renewed) as channel:
        stub = appliance_identity_pb2_grpc.ApplianceIdentityServiceStub(channel)
        reply = await stub.ConfirmApplianceCertificate(appliance_identity_pb2.ConfirmApplianceCertificateRequest())
    assert reply.serial == format(renewed.certificate.serial_number, "x")
    assert list(reply.superseded_serials) == [format(first.certificate.serial_number, "x")]
    async with mtls(first) as channel:  # the predecessor can neither confirm nor renew
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await appliance_identity_pb2_grpc.ApplianceIdentityServiceStub(channel).RenewApplianceCertificate(
                appliance_identity_pb2.RenewApplianceCertificateRequest(
                    csr_pem=csr_of(ec.generate_private_key(ec.SECP256R1()))
                )
            )
        assert error_details_of(err.value).reason == "CERTIFICATE_SUPERSEDED"
    rows = await server.app.db.run(
        lambda: list(ApplianceCertificate.select().where(ApplianceCertificate.appliance == first.appliance_id))
    )
    assert sorted(r.revoked_at is None for r in rows) == [False, True]  # one live certificate, the newest


async def test_a_credential_hello_is_refused_by_default(server: OmaServer, admin: grpc.aio.Channel) -> None:
    ticket = await ticket_for(server, admin, "vma-old")
    async with oma_channel(server) as channel:
        err = await refused_hello(channel, appliance_id=ticket.appliance_id, credential="x", agent_version="0.2")
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error_details_of(err).reason == "CERTIFICATE_REQUIRED"


async def _agent(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(VENV_BIN / "vma-agent"), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_omactl_writes_a_join_file_and_vma_agent_enroll_joins_once(server: OmaServer, tmp_path: Path) -> None:
    join_file, identity_dir = tmp_path / "vma.join", tmp_path / "identity"
    appliance_side = f"localhost:{server.port}"  # how the appliance reaches the operator port (a certificate name)
    enrolled = await run_omactl(
        target_of(server),
        "--json",
        *("appliances", "enroll", "vma-cli", "--join-file", str(join_file), "--oma-address", appliance_side),
    )
    assert enrolled.code == 0, enrolled
    shown = json.loads(enrolled.out)
    assert shown["join_token"] == "" and shown["ca_fingerprint"]  # the token went to the file, not the output
    assert join_file.stat().st_mode & 0o777 == 0o600
    ticket = JoinTicket.load(join_file)
    assert ticket.oma == appliance_side and ticket.join_token.startswith("oma-join_")
    assert server.app.ca is not None and ticket.ca_fingerprint == server.app.ca.fingerprint

    code, out, err = await _agent("enroll", "--join-file", str(join_file), "--identity-dir", str(identity_dir))
    assert code == 0, err
    assert f"joined as appliance {ticket.appliance_id}" in out
    assert (identity_dir / "appliance.key").stat().st_mode & 0o777 == 0o600
    assert ApplianceIdentity.load(identity_dir).appliance_id == ticket.appliance_id

    again = ("--identity-dir", str(tmp_path / "again"), "--oma", f"127.0.0.1:{server.port}")  # another name of it
    code, out, err = await _agent("enroll", "--join-file", str(join_file), *again)
    assert code == 1 and "JOIN_TOKEN_USED" in err, err
    assert ticket.join_token not in out + err
    code, _, err = await _agent(
        "run", "--identity-dir", str(tmp_path / "none"), "--vcenter-dir", ".", "--state-dir", "."
    )
    assert code == 2 and "vma-agent enroll" in err
    assert server.app.ca is not None
    key = ec.generate_private_key(ec.SECP256R1())
    stale = server.app.ca.issue_client_certificate(key.public_key(), ticket.appliance_id, -timedelta(minutes=1))
    old = ApplianceIdentity.load(identity_dir)
    replace(old, key_pem=key_pem(key), certificate_pem=cert_pem(stale)).save(tmp_path / "stale")
    code, _, err = await _agent(
        "run", "--identity-dir", str(tmp_path / "stale"), "--vcenter-dir", ".", "--state-dir", str(tmp_path / "s")
    )
    assert code == 2 and "expired" in err and "enroll it again" in err, err


def _nbdinfo(uri: str, *, listing: bool = False) -> subprocess.CompletedProcess[str]:
    """nbdinfo on one export (`--size`), or asking the server for its export list."""
    argv = ["nbdinfo", "--list", "--json", uri] if listing else ["nbdinfo", "--size", uri]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


async def _served_export(server: OmaServer, tmp_path: Path, name: str) -> str:
    """An export of a 1 MiB file on the OMA's nbdkit; returns its name."""
    disk = tmp_path / f"{name}.img"
    disk.write_bytes(bytes(1 << 20))
    await server.app.nbd.add_export(name, str(disk))
    return name


async def test_nbd_needs_tls_and_a_certificate_of_the_omas_ca(
    server: OmaServer, admin: grpc.aio.Channel, tmp_path: Path
) -> None:
    nbd = server.app.nbd
    assert nbd.tls is not None and nbd.tls.required
    assert "--tls=require" in nbd.process.argv() and "--tls-verify-peer" in nbd.process.argv()
    assert nbd.uri_for("vol-x").startswith("nbds://")
    export = await _served_export(server, tmp_path, "oma-vol-tls")
    identity = await join(await ticket_for(server, admin, "vma-nbd"))
    identity.save(tmp_path / "identity")
    foreign_ca = CertificateAuthority(tmp_path / "foreign")
    foreign_key = ec.generate_private_key(ec.SECP256R1())
    foreign = tmp_path / "foreign-nbd"
    foreign.mkdir()
    (foreign / "ca-cert.pem").write_bytes(identity.ca_pem)  # trusts the OMA; presents a certificate of another CA
    issued = foreign_ca.issue_client_certificate(foreign_key.public_key(), identity.appliance_id, timedelta(days=1))
    (foreign / "client-cert.pem").write_bytes(cert_pem(issued))
    (foreign / "client-key.pem").write_bytes(key_pem(foreign_key))
    address = f"127.0.0.1:{nbd.port}"
    own = f"tls-certificates={tmp_path / 'identity' / 'nbd'}"

    plaintext, tls_without_certificate, with_foreign, with_own = await asyncio.gather(
        asyncio.to_thread(_nbdinfo, f"nbd://{address}/{export}"),
        asyncio.to_thread(_nbdinfo, f"nbds://{address}/{export}?tls-verify-peer=false"),
        asyncio.to_thread(_nbdinfo, f"nbds://{address}/{export}?tls-certificates={foreign}"),
        asyncio.to_thread(_nbdinfo, f"nbds://{address}/{export}?{own}"),
    )
    assert plaintext.returncode != 0, "a client without TLS can open an export"
    assert tls_without_certificate.returncode != 0, "a TLS client without a certificate can open an export"
    assert with_foreign.returncode != 0, "a certificate of another CA opens the NBD port"
    assert with_own.returncode == 0 and with_own.stdout.strip() == str(1 << 20), with_own.stderr


async def test_an_appliance_cannot_list_the_exports_nor_learn_their_names(
    server: OmaServer, admin: grpc.aio.Channel, tmp_path: Path
) -> None:
    nbd = server.app.nbd
    assert "--filter=exportname" in nbd.process.argv() and "exportname-list=error" in nbd.process.argv()
    export = await _served_export(server, tmp_path, "oma-vol-9f1c2d3e-4b7a-replica-of-b")
    identity = await join(await ticket_for(server, admin, "vma-curious"))
    identity.save(tmp_path / "identity")
    base = f"nbds://127.0.0.1:{nbd.port}"
    own = f"tls-certificates={tmp_path / 'identity' / 'nbd'}"
    listing, guessed = await asyncio.gather(
        asyncio.to_thread(_nbdinfo, f"{base}?{own}", listing=True),
        asyncio.to_thread(_nbdinfo, f"{base}/oma-vol-9f1c2d3e?{own}"),
    )
    assert listing.returncode != 0 and export not in listing.stdout + listing.stderr, listing.stdout
    assert guessed.returncode != 0 and "no export named" in guessed.stderr, guessed.stderr
    assert export not in guessed.stderr  # an unknown name gets no hint of the names that exist
    assert {e.state for e in nbd.list_exports()} == {"active"}  # the OMA's own probe still sees it served
    await nbd.wait_ready()


async def test_a_revoked_appliances_certificate_no_longer_opens_the_nbd_port(
    server: OmaServer, admin: grpc.aio.Channel, tmp_path: Path
) -> None:
    export = await _served_export(server, tmp_path, "oma-vol-revocation")
    revoked, kept = [await join(await ticket_for(server, admin, name)) for name in ("vma-gone", "vma-kept")]
    revoked.save(tmp_path / "gone")
    kept.save(tmp_path / "kept")
    uri = f"nbds://127.0.0.1:{server.app.nbd.port}/{export}"
    before = await asyncio.to_thread(_nbdinfo, f"{uri}?tls-certificates={tmp_path / 'gone' / 'nbd'}")
    assert before.returncode == 0, before.stderr
    launches = server.app.nbd.restarts
    await appliance_pb2_grpc.ApplianceServiceStub(admin).RevokeAppliance(
        appliance_pb2.RevokeApplianceRequest(id=revoked.appliance_id)
    )
    assert server.app.nbd.restarts >= launches + 1  # nbdkit read the new CRL before RevokeAppliance answered
    gone, still = await asyncio.gather(
        asyncio.to_thread(_nbdinfo, f"{uri}?tls-certificates={tmp_path / 'gone' / 'nbd'}"),
        asyncio.to_thread(_nbdinfo, f"{uri}?tls-certificates={tmp_path / 'kept' / 'nbd'}"),
    )
    assert gone.returncode != 0, "a revoked appliance's certificate still opens the NBD port"
    assert still.returncode == 0, still.stderr
    await server.app.nbd.wait_ready()
    assert server.app.nbd.healthy  # the probe's own certificate is not revoked


async def test_joins_and_renewals_are_in_the_audit_log(server: OmaServer, admin: grpc.aio.Channel) -> None:
    ticket = await ticket_for(server, admin, "vma-audit")
    identity = await join(ticket)
    with pytest.raises(grpc.aio.AioRpcError):
        await join(ticket)  # the token was spent: refused, and recorded
    await renew(identity)

    async def entries(method: str) -> list[access_pb2.AuditEntry]:
        reply = await access_pb2_grpc.AccessServiceStub(admin).ListAuditEntries(
            access_pb2.ListAuditEntriesRequest(method=f"/oma.v1.ApplianceIdentityService/{method}")
        )
        return list(reply.entries)

    joins, renewals = await entries("JoinAppliance"), await entries("RenewApplianceCertificate")
    assert [(e.actor, e.outcome, e.reason) for e in joins] == [
        ("join token", "UNAUTHENTICATED", "JOIN_TOKEN_USED"),  # newest first
        ("join token", "OK", ""),
    ]
    assert [(e.actor, e.outcome) for e in renewals] == [(f"appliance:{identity.appliance_id}", "OK")]
    assert all(e.peer and ticket.join_token not in str(e) for e in joins + renewals)
