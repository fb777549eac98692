"""HTTPS and mTLS, with real certificates made by the ``openssl`` CLI and real TLS clients.

The server is the sidecar's own application behind the reloading context (in process), and
once the real ``serve`` command (a process, as users run it). Rotation replaces the files on
disk and checks what certificate the next connection is served; mTLS refuses a client without
a certificate signed by the configured CA.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from sidecar.cli import main
from sidecar.config import Config
from sidecar.errors import ConfigError
from sidecar.runtime import build_components
from sidecar.tls import ReloadingContext, TLSFiles, build_context
from sidecar.web import create_app
from tests.conftest import API_TOKEN, WEBHOOK_TOKEN, write_config
from tests.support.alertmanager import make_alert
from tests.support.alertmanager import render_config as render_alertmanager_config
from tests.support.binaries import require_binary
from tests.support.fixtures import AlertmanagerFactory
from tests.support.ports import LOOPBACK, free_port
from tests.support.processes import ManagedProcess
from tests.support.prometheus import Prometheus


@dataclass
class Pki:
    """A throwaway PKI in a directory: one CA, and certificates it signs on demand."""

    directory: Path
    openssl: str

    def run(self, *args: str) -> None:
        """Run ``openssl`` in the directory."""
        result = subprocess.run(
            [self.openssl, *args],
            cwd=self.directory,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr

    def key(self, name: str) -> Path:
        """A new EC private key (fast to make), PKCS#8 PEM."""
        self.run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", name)
        return self.directory / name

    def ca(self, name: str) -> Path:
        """A self-signed CA certificate ``<name>.pem`` with its key ``<name>.key``."""
        self.key(f"{name}.key")
        self.run(
            "req", "-x509", "-new", "-key", f"{name}.key", "-subj", f"/CN={name}",
            "-days", "2", "-out", f"{name}.pem",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip
        return self.directory / f"{name}.pem"

    def issue(self, name: str, ca: str, *, server: bool = True) -> tuple[Path, Path]:
        """A certificate for CN ``name`` (SAN 127.0.0.1 for servers) signed by ``ca``."""
        self.key(f"{name}.key")
        self.run(
            "req", "-new", "-key", f"{name}.key", "-subj", f"/CN={name}", "-out", f"{name}.csr"
        )  # fmt: skip
        extensions = self.directory / f"{name}.ext"
        usage = "serverAuth" if server else "clientAuth"
        san = f"subjectAltName=IP:{LOOPBACK},DNS:localhost\n" if server else ""
        extensions.write_text(f"{san}extendedKeyUsage={usage}\n", encoding="utf-8")
        self.run(
            "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-days", "1", "-out", f"{name}.pem", "-extfile", str(extensions),
        )  # fmt: skip
        return self.directory / f"{name}.pem", self.directory / f"{name}.key"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA for servers, a CA for clients, two server certificates, one client certificate."""
    pki = Pki(tmp_path_factory.mktemp("pki"), str(require_binary("openssl")))
    pki.ca("server-ca")
    pki.ca("client-ca")
    pki.ca("other-ca")
    pki.issue("server-one", "server-ca")
    pki.issue("server-two", "server-ca")
    pki.issue("client", "client-ca", server=False)
    pki.issue("stranger", "other-ca", server=False)
    return pki


def install(pki: Pki, name: str, target: Path) -> TLSFiles:
    """Put ``name``'s certificate and key at ``target``'s fixed file names, as a rotation does."""
    target.mkdir(parents=True, exist_ok=True)
    for suffix in ("pem", "key"):
        staged = target / f".staged.{suffix}"
        staged.write_bytes((pki.directory / f"{name}.{suffix}").read_bytes())
        os.replace(staged, target / f"tls.{suffix}")  # atomic, like a Secret's symlink swap
    return TLSFiles(cert=target / "tls.pem", key=target / "tls.key")


def client_context(pki: Pki, client: str | None = None) -> ssl.SSLContext:
    """A client trusting the server CA, with ``client``'s certificate when given."""
    context = ssl.create_default_context(cafile=pki.directory / "server-ca.pem")
    if client is not None:
        context.load_cert_chain(pki.directory / f"{client}.pem", pki.directory / f"{client}.key")
    return context


def fingerprint(pki: Pki, name: str) -> str:
    """SHA-256 of a certificate's DER form, as the client sees it."""
    pem = (pki.directory / f"{name}.pem").read_text(encoding="ascii")
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


async def served_certificate(port: int, context: ssl.SSLContext) -> str:
    """The fingerprint of the certificate the server presents on a new connection."""
    _, writer = await asyncio.open_connection(LOOPBACK, port, ssl=context)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return hashlib.sha256(der).hexdigest()
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.fixture
async def serve_tls(
    config_factory: Callable[..., Config],
) -> AsyncIterator[Callable[[ReloadingContext], Any]]:
    """Serve the sidecar's app on a loopback port with a reloading context; return the port."""
    runners: list[web.AppRunner] = []

    async def start(tls: ReloadingContext) -> int:
        app = create_app(build_components(config_factory()))
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, LOOPBACK, 0, ssl_context=tls.server_context)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        return int(server.sockets[0].getsockname()[1])

    yield start
    for runner in runners:
        await runner.cleanup()


async def get_status(port: int, context: ssl.SSLContext, path: str = "/healthz") -> int:
    """GET over HTTPS with aiohttp, a new connection each time."""
    connector = aiohttp.TCPConnector(ssl=context, force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(f"https://{LOOPBACK}:{port}{path}") as response,
    ):
        return response.status


async def test_https_serves_and_rotated_certificates_are_picked_up(
    pki: Pki, tmp_path: Path, serve_tls: Callable[[ReloadingContext], Any]
) -> None:
    """The next connection after the files are replaced gets the new certificate, no restart."""
    files = install(pki, "server-one", tmp_path / "tls")
    tls = ReloadingContext(files)
    port = await serve_tls(tls)
    trust = client_context(pki)
    assert await get_status(port, trust) == 200
    assert await served_certificate(port, trust) == fingerprint(pki, "server-one")

    install(pki, "server-two", tmp_path / "tls")
    assert await served_certificate(port, trust) == fingerprint(pki, "server-two")
    assert await get_status(port, trust) == 200
    assert tls.reloads == 1
    # Plain HTTP on the TLS port is not served.
    with pytest.raises(aiohttp.ClientError):
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://{LOOPBACK}:{port}/healthz") as response,
        ):
            await response.read()


async def test_a_half_rotated_pair_keeps_the_last_good_certificate(
    pki: Pki, tmp_path: Path, serve_tls: Callable[[ReloadingContext], Any]
) -> None:
    """A new certificate with the old key is refused: the old pair serves until both changed."""
    files = install(pki, "server-one", tmp_path / "tls")
    tls = ReloadingContext(files)
    port = await serve_tls(tls)
    trust = client_context(pki)
    (tmp_path / "tls/tls.pem").write_bytes((pki.directory / "server-two.pem").read_bytes())
    assert await served_certificate(port, trust) == fingerprint(pki, "server-one")
    assert tls.reloads == 0
    (tmp_path / "tls/tls.key").write_bytes((pki.directory / "server-two.key").read_bytes())
    assert await served_certificate(port, trust) == fingerprint(pki, "server-two")
    assert tls.reloads == 1


async def test_mtls_refuses_a_client_without_a_trusted_certificate(
    pki: Pki, tmp_path: Path, serve_tls: Callable[[ReloadingContext], Any]
) -> None:
    """With a client CA, only clients holding a certificate it signed get an answer."""
    files = install(pki, "server-one", tmp_path / "tls")
    mtls = TLSFiles(files.cert, files.key, client_ca=pki.directory / "client-ca.pem")
    port = await serve_tls(ReloadingContext(mtls))
    assert await get_status(port, client_context(pki, "client")) == 200
    for client in (None, "stranger"):
        with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
            await get_status(port, client_context(pki, client))


async def test_a_rotated_client_ca_is_picked_up(
    pki: Pki, tmp_path: Path, serve_tls: Callable[[ReloadingContext], Any]
) -> None:
    """Replacing the client CA bundle admits the clients of the new CA, refuses the old ones."""
    files = install(pki, "server-one", tmp_path / "tls")
    ca = tmp_path / "tls/client-ca.pem"
    ca.write_bytes((pki.directory / "client-ca.pem").read_bytes())
    port = await serve_tls(ReloadingContext(TLSFiles(files.cert, files.key, client_ca=ca)))
    assert await get_status(port, client_context(pki, "client")) == 200
    staged = tmp_path / "tls/.ca"
    staged.write_bytes((pki.directory / "other-ca.pem").read_bytes())
    os.replace(staged, ca)
    assert await get_status(port, client_context(pki, "stranger")) == 200
    with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
        await get_status(port, client_context(pki, "client"))


def test_startup_errors_name_the_file_and_the_reason(pki: Pki, tmp_path: Path) -> None:
    """A missing file, a file of the wrong kind and a key of another certificate are refused."""
    one = pki.directory / "server-one"
    cases = [
        (
            TLSFiles(tmp_path / "missing.pem", Path(f"{one}.key")),
            f"{tmp_path / 'missing.pem'}: server.tls_cert_file: no such file",
        ),
        (
            TLSFiles(Path(f"{one}.key"), Path(f"{one}.key")),
            f"{one}.key: server.tls_cert_file: does not hold a PEM certificate",
        ),
        (
            TLSFiles(Path(f"{one}.pem"), pki.directory / "server-two.key"),
            f"{pki.directory / 'server-two.key'}: server.tls_key_file: the private key does not "
            f"match the certificate in {one}.pem",
        ),
        (
            TLSFiles(Path(f"{one}.pem"), Path(f"{one}.key"), client_ca=tmp_path / "no-ca.pem"),
            f"{tmp_path / 'no-ca.pem'}: server.tls_client_ca_file: no such file",
        ),
    ]
    for files, message in cases:
        with pytest.raises(ConfigError) as caught:
            build_context(files)
        assert [str(p) for p in caught.value.problems] == [message]


def test_check_config_and_serve_refuse_a_mismatched_key(
    pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``check-config`` and ``serve`` exit 1 naming the key file, before listening."""
    config = write_config(
        tmp_path,
        {
            "server": {
                "tls_cert_file": str(pki.directory / "server-one.pem"),
                "tls_key_file": str(pki.directory / "server-two.key"),
            }
        },
    )
    for command in ("check-config", "serve"):
        assert main([command, "--config", str(config)]) == 1
        err = capsys.readouterr().err
        assert f"{pki.directory / 'server-two.key'}: server.tls_key_file: the private key" in err
    half = write_config(tmp_path, {"server": {"tls_key_file": "tls.key", "tls_cert_file": None}})
    assert main(["check-config", "--config", str(half)]) == 1
    assert "set both tls_cert_file and tls_key_file" in capsys.readouterr().err


class HttpsSidecar(ManagedProcess):
    """``python -m sidecar serve`` with TLS; ready once /readyz answers over HTTPS."""

    def __init__(self, config: Path, port: int, ready: ssl.SSLContext) -> None:
        self.port = port
        self._ready_context = ready
        super().__init__(
            "sidecar-tls",
            [sys.executable, "-m", "sidecar", "serve", "--config", str(config)],
            log_path=config.parent / "sidecar.log",
            cwd=config.parent,
            ready_check=self._answers,
            ready_timeout=30.0,
        )

    def _answers(self) -> bool:
        try:
            with socket_ssl(self.port, self._ready_context) as tls:
                tls.sendall(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                return tls.recv(64).startswith(b"HTTP/1.1 200")
        except OSError:
            return False


def socket_ssl(port: int, context: ssl.SSLContext) -> ssl.SSLSocket:
    """A TLS connection to the loopback port."""
    raw = socket.create_connection((LOOPBACK, port), timeout=5)
    return context.wrap_socket(raw, server_hostname=LOOPBACK)


async def test_serve_listens_with_tls(pki: Pki, tmp_path: Path) -> None:
    """The real ``serve`` command speaks HTTPS with mTLS on its configured files."""
    port = free_port()
    config = write_config(
        tmp_path,
        {
            "server": {
                "listen": f"{LOOPBACK}:{port}",
                "tls_cert_file": str(pki.directory / "server-one.pem"),
                "tls_key_file": str(pki.directory / "server-one.key"),
                "tls_client_ca_file": str(pki.directory / "client-ca.pem"),
            },
            "logging": {"format": "json"},
        },
    )
    assert yaml.safe_load(config.read_text())["server"]["tls_client_ca_file"]
    with HttpsSidecar(config, port, client_context(pki, "client")):
        assert await get_status(port, client_context(pki, "client"), "/readyz") == 200
        with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
            await get_status(port, client_context(pki), "/readyz")


@pytest.mark.e2e
async def test_prometheus_scrapes_over_https_with_a_client_certificate(
    pki: Pki, tmp_path: Path, serve_tls: Callable[[ReloadingContext], Any]
) -> None:
    """A real Prometheus scrapes /metrics over mTLS with its certificate, and fails without one."""
    files = install(pki, "server-one", tmp_path / "tls")
    mtls = TLSFiles(files.cert, files.key, client_ca=pki.directory / "client-ca.pem")
    port = await serve_tls(ReloadingContext(mtls))
    tls_config = {"ca_file": str(pki.directory / "server-ca.pem")}
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [
            {
                "job_name": job,
                "scheme": "https",
                "tls_config": {**tls_config, **client},
                "static_configs": [{"targets": [f"{LOOPBACK}:{port}"]}],
            }
            for job, client in [
                (
                    "with-certificate",
                    {
                        "cert_file": str(pki.directory / "client.pem"),
                        "key_file": str(pki.directory / "client.key"),
                    },
                ),
                ("without-certificate", {}),
            ]
        ],
    }
    prometheus = Prometheus(
        binary=require_binary("prometheus"),
        workdir=tmp_path / "prometheus",
        config_text=yaml.safe_dump(config),
        port=free_port(),
    )
    await prometheus.astart()
    try:
        jobs = {"with-certificate", "without-certificate"}
        samples = await prometheus.wait_for(
            "up", lambda found: {s.labels["job"] for s in found} == jobs
        )
        up = {s.labels["job"]: s.value for s in samples}
        assert up == {"with-certificate": 1.0, "without-certificate": 0.0}
        scraped = await prometheus.query(
            'incident_sla_pagerduty_outbox_pending{job="with-certificate"}'
        )
        assert len(scraped) == 1
    finally:
        await asyncio.to_thread(prometheus.stop)


@pytest.mark.e2e
async def test_alertmanager_delivers_over_mtls(
    pki: Pki,
    tmp_path: Path,
    serve_tls: Callable[[ReloadingContext], Any],
    alertmanager_factory: AlertmanagerFactory,
) -> None:
    """A real Alertmanager with a client certificate posts its webhook over mTLS: an incident."""
    files = install(pki, "server-one", tmp_path / "tls")
    mtls = TLSFiles(files.cert, files.key, client_ca=pki.directory / "client-ca.pem")
    port = await serve_tls(ReloadingContext(mtls))
    config = yaml.safe_load(
        render_alertmanager_config(
            f"https://{LOOPBACK}:{port}/webhook/alertmanager", bearer_token=WEBHOOK_TOKEN
        )
    )
    config["receivers"][0]["webhook_configs"][0]["http_config"]["tls_config"] = {
        "ca_file": str(pki.directory / "server-ca.pem"),
        "cert_file": str(pki.directory / "client.pem"),
        "key_file": str(pki.directory / "client.key"),
    }
    am = alertmanager_factory(config_text=yaml.safe_dump(config), start=False)
    await am.astart()
    await am.post_alerts([make_alert({"alertname": "ServiceDown", "service": "publishing"})])
    client = client_context(pki, "client")
    deadline = asyncio.get_running_loop().time() + 30
    incidents: list[Any] = []
    while not incidents:
        assert asyncio.get_running_loop().time() < deadline, "no incident over mTLS in 30 s"
        connector = aiohttp.TCPConnector(ssl=client, force_close=True)
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.get(
                f"https://{LOOPBACK}:{port}/api/v1/incidents",
                headers={"Authorization": f"Bearer {API_TOKEN}"},
            ) as response,
        ):
            incidents = (await response.json())["incidents"]
        await asyncio.sleep(0.2)
    assert incidents[0]["labels"]["alertname"] == "ServiceDown"
