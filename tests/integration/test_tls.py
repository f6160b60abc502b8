"""TLS to NATS (server and client certificates) and to PostgreSQL (sslmode=verify-full), with a CA
generated for the test, plus PostgreSQL's password (SCRAM) authentication."""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from legato.bus.connection import connect_with
from legato.client import LegatoClient
from legato.config.settings import Settings
from legato.devstack import EmbeddedNats, EmbeddedPostgres
from legato.devstack.nats_server import ServerTls
from legato.security.keyring import Keyring
from legato.store.pool import create_pool

pytestmark = pytest.mark.timeout(180)


class Pki:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "legato test CA")])
        now = dt.datetime.now(dt.UTC)
        self.ca_cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.ca_key, hashes.SHA256())
        )
        self.ca = self._write("ca.pem", self.ca_cert.public_bytes(serialization.Encoding.PEM))

    def _write(self, name: str, data: bytes) -> str:
        path = self.folder / name
        path.write_bytes(data)
        path.chmod(0o600)
        return str(path)

    def issue(self, cn: str, *, server: bool) -> tuple[str, str]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        cert = builder.sign(self.ca_key, hashes.SHA256())
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return (
            self._write(f"{cn}.crt", cert.public_bytes(serialization.Encoding.PEM)),
            self._write(f"{cn}.key", key_pem),
        )


@pytest.fixture
def pki() -> Iterator[Pki]:
    folder = Path(tempfile.mkdtemp(prefix="legato-test-pki-"))
    folder.chmod(0o711)
    try:
        yield Pki(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def test_nats_tls_with_client_certificates(pki: Pki, keyring: Keyring, tmp_path: Path) -> None:
    server_cert, server_key = pki.issue("nats-server", server=True)
    client_cert, client_key = pki.issue("legato-client", server=False)
    server = EmbeddedNats(
        tmp_path / "nats",
        preferred_port=0,
        users=keyring.users(),
        tls=ServerTls(server_cert, server_key, pki.ca),
    ).start()
    try:
        good = Settings(
            nats_url=server.url,
            nats_creds=str(keyring.seed_file("admin")),
            nats_tls_ca=pki.ca,
            nats_tls_cert=client_cert,
            nats_tls_key=client_key,
        )
        assert good.nats_url.startswith("tls://")
        nc = await connect_with(good, name="tls-test")
        try:
            assert nc.is_connected
            await nc.flush()
        finally:
            await nc.close()
        client = await LegatoClient.connect(good.nats_url, settings=good)
        await client.close()
        # No client certificate: the server refuses the handshake.
        no_cert = Settings(nats_url=server.url, nats_creds=good.nats_creds, nats_tls_ca=pki.ca)
        with pytest.raises(ConnectionError):
            await connect_with(no_cert, name="tls-no-cert", connect_timeout=2.0)
        # Plain text to a TLS server: refused too.
        plain = Settings(nats_url=server.url.replace("tls://", "nats://"), nats_creds=good.nats_creds)
        with pytest.raises(ConnectionError):
            await connect_with(plain, name="plain", connect_timeout=2.0)
    finally:
        server.stop()


def postgres_with_ssl() -> Path | None:
    """A PostgreSQL build with SSL (the embedded wheel's has none): the distribution's, when installed."""
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        binary = candidate / "postgres"
        if (
            binary.is_file()
            and "libssl"
            in subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False).stdout
        ):
            return candidate
    return None


async def test_postgres_scram_password_and_verified_tls(pki: Pki, tmp_path: Path) -> None:
    bin_dir = postgres_with_ssl()
    if bin_dir is None:
        pytest.skip("no PostgreSQL build with SSL on this machine (the embedded one has none)")
    cert, key = pki.issue("localhost", server=True)
    root = tmp_path / "pg"
    root.mkdir()
    root.chmod(0o711)
    pg = EmbeddedPostgres(
        root / "data", preferred_port=0, durable=False, ssl=(cert, key), bin_dir=bin_dir
    ).start()
    try:
        assert (root / "data.password").stat().st_mode & 0o777 == 0o600
        url = pg.url("postgres")
        pool = await create_pool(f"{url}?sslmode=verify-full&sslrootcert={pki.ca}", min_size=1, max_size=1)
        try:
            async with pool.acquire() as conn:
                assert await conn.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") is True
        finally:
            await pool.close()
        # Password authentication: no password, or a wrong one, is refused.
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(f"postgresql://postgres:wrong@127.0.0.1:{pg.port}/postgres", ssl=False)
        with pytest.raises((asyncpg.InvalidPasswordError, asyncpg.ClientCannotConnectError)):
            await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{pg.port}/postgres", ssl=False)
    finally:
        pg.stop()
