"""TLS for the HTTP server: a context from ``server.tls_*`` files that follows them on disk.

Certificates are rotated by replacing the files (cert-manager, a Kubernetes Secret's
symlink swap). Every TLS handshake first looks at the files' stamps (modification time,
size, inode: a few ``stat`` calls); when they changed, a fresh context is built from them
and the connection is moved onto it from the ClientHello callback, so the new certificate
(and client CA) serve from the next connection on, without a restart. A rotation caught
half-way (a new certificate with the old key) is logged and the last good context keeps
serving until the files change again.
"""

from __future__ import annotations

import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from sidecar.errors import ConfigError, ConfigProblem

log = logging.getLogger("sidecar.tls")

Stamp = tuple[tuple[int, int, int] | None, ...]


@dataclass(frozen=True, slots=True)
class TLSFiles:
    """The server's certificate chain, its private key and, for mTLS, the client CA bundle."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def named(self) -> list[tuple[str, Path]]:
        """Each file with the configuration key that names it."""
        files = [("server.tls_cert_file", self.cert), ("server.tls_key_file", self.key)]
        if self.client_ca is not None:
            files.append(("server.tls_client_ca_file", self.client_ca))
        return files

    def stamp(self) -> Stamp:
        """What changes when a file is replaced or rewritten (None for a missing file)."""
        stamps: list[tuple[int, int, int] | None] = []
        for _, path in self.named():
            try:
                st = os.stat(path)
            except OSError:
                stamps.append(None)
            else:
                stamps.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(stamps)


# What each file must hold, as PEM: checked first, so that an error names the wrong file.
_PEM_MARKERS = {
    "server.tls_cert_file": ("-----BEGIN CERTIFICATE-----", "a PEM certificate"),
    "server.tls_key_file": ("PRIVATE KEY-----", "a PEM private key"),
    "server.tls_client_ca_file": ("-----BEGIN CERTIFICATE-----", "PEM CA certificates"),
}


def _read_problems(files: TLSFiles) -> list[ConfigProblem]:
    problems = []
    for key, path in files.named():
        try:
            text = path.read_text(encoding="ascii", errors="replace")
        except FileNotFoundError:
            problems.append(ConfigProblem(str(path), key, "no such file"))
            continue
        except OSError as exc:
            problems.append(ConfigProblem(str(path), key, f"cannot read: {exc.strerror}"))
            continue
        marker, what = _PEM_MARKERS[key]
        if marker not in text:
            problems.append(ConfigProblem(str(path), key, f"does not hold {what}"))
        elif key == "server.tls_key_file" and "ENCRYPTED" in text:
            problems.append(
                ConfigProblem(str(path), key, "the private key is encrypted: give it unencrypted")
            )
    return problems


def build_context(files: TLSFiles) -> ssl.SSLContext:
    """A server context (TLS 1.2 or later) from ``files``; raise ConfigError naming the file."""
    problems = _read_problems(files)
    if problems:
        raise ConfigError(problems)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(files.cert, files.key)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            reason = f"the private key does not match the certificate in {files.cert}"
            problem = ConfigProblem(str(files.key), "server.tls_key_file", reason)
        else:
            reason = f"cannot load the certificate with the key {files.key}: {exc.reason or exc}"
            problem = ConfigProblem(str(files.cert), "server.tls_cert_file", reason)
        raise ConfigError([problem]) from exc
    if files.client_ca is not None:
        try:
            context.load_verify_locations(cafile=files.client_ca)
        except ssl.SSLError as exc:
            raise ConfigError(
                [
                    ConfigProblem(
                        str(files.client_ca),
                        "server.tls_client_ca_file",
                        f"cannot load the CA certificates: {exc.reason or exc}",
                    )
                ]
            ) from exc
        # mTLS: a client without a certificate signed by the CA fails the handshake.
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class ReloadingContext:
    """The context the server listens with; each handshake moves to the files' newest context."""

    def __init__(self, files: TLSFiles) -> None:
        """Build the first context; raise ConfigError (missing file, mismatched key) at start."""
        self.files = files
        self._stamp = files.stamp()
        self._failed: Stamp | None = None
        self.server_context = build_context(files)
        self.server_context.sni_callback = self._on_client_hello
        self._current = self.server_context
        self.reloads = 0

    def current(self) -> ssl.SSLContext:
        """The context of the files as they are now (the last good one if they are broken)."""
        stamp = self.files.stamp()
        if stamp == self._stamp or stamp == self._failed:
            return self._current
        try:
            context = build_context(self.files)
        except ConfigError as exc:
            # Probably a rotation caught between writing the certificate and the key:
            # retried once the files change again.
            self._failed = stamp
            log.error(
                "TLS files changed but cannot be loaded; serving the previous certificate",
                extra={"problems": [str(p) for p in exc.problems]},
            )
            return self._current
        self._stamp, self._failed, self._current = stamp, None, context
        self.reloads += 1
        log.info("TLS certificate reloaded", extra={"cert_file": str(self.files.cert)})
        return context

    def _on_client_hello(
        self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: object
    ) -> None:
        # OpenSSL calls this for every ClientHello (server_name is None without SNI),
        # before the certificate is chosen: switching the context here serves the new one.
        try:
            context = self.current()
            if connection.context is not context:
                connection.context = context
        except Exception:  # an exception here would only abort the handshake, unexplained
            log.exception("TLS context switch failed; serving the previous certificate")
