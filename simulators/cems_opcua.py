"""The simulated CEMS stack served over OPC-UA (asyncua), as a plant DAHS or historian would.

Address space (namespace ``urn:carbonlink:sim:cems``, index 2 on a fresh server)::

    0:Objects/2:CEMS/2:Stack1/2:SO2 ... 2:Load      node ids ns=2;i=10 ... ns=2;i=21

Every ``interval_s`` each variable gets a new value with a fresh SourceTimestamp,
so a client subscribing with the StatusValueTimestamp trigger sees every sample,
even a stuck one. Faults at run time: a Bad/Uncertain status on a node, a stuck
value, refusing subscriptions, stopping and restarting the server on the same port.
The stack's own faults (simulators/cems.py) show on every node: its mode as a status
code (calibration UncertainSensorCalibration, maintenance BadOutOfService, fault
BadSensorFailure), communication loss as BadNoCommunication, a wrong map as every
node carrying its neighbour's value; a node's own fault wins over the stack's.
Security: optional username/password and Basic256Sha256 (Sign, SignAndEncrypt)
with a self-signed certificate made at run time.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import logging
import socket
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from asyncua import Server, ua
from asyncua.common.utils import ServiceError
from asyncua.crypto.permission_rules import User, UserRole
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .cems import LAYOUT, CemsStack, Mode

log = logging.getLogger(__name__)
logging.getLogger("asyncua").setLevel(logging.ERROR)  # it logs every request at INFO

NAMESPACE = "urn:carbonlink:sim:cems"
APP_URI = "urn:carbonlink:sim:cems-opcua"
# OPC-UA browse names for the model's keys, in LAYOUT order.
BROWSE_NAMES = {"so2": "SO2", "nox": "NOx", "no": "NO", "no2": "NO2", "o2": "O2", "co2": "CO2",
                "dust": "Dust", "flow": "Flow", "temp": "Temp", "pressure": "Pressure",
                "moisture": "Moisture", "load": "Load"}
UNITS = {"so2": "mg/m³", "nox": "mg/m³", "no": "mg/m³", "no2": "mg/m³", "o2": "%", "co2": "%",
         "dust": "mg/m³", "flow": "m³/s", "temp": "°C", "pressure": "kPa", "moisture": "%", "load": "%"}
FIRST_VARIABLE_ID = 10  # numeric ids are fixed so configs written once keep working after a restart
# The stack's mode as an OPC-UA status (Part 4, 7.34 / Part 8): the nearest standard codes.
MODE_STATUS = {Mode.CALIBRATION: ua.StatusCodes.UncertainSensorCalibration,
               Mode.MAINTENANCE: ua.StatusCodes.BadOutOfService,
               Mode.FAULT: ua.StatusCodes.BadSensorFailure}


def self_signed_certificate(directory: Path, common_name: str, application_uri: str,
                            *, client: bool = False, days: int = 30) -> tuple[Path, Path]:
    """An OPC-UA application instance certificate (Part 6, 6.2.2) and its key, as DER and PEM files.

    The subjectAltName carries the application URI (peers check it) and this host's
    names; key usage allows signing and key/data encipherment as Basic256Sha256 needs.
    """
    directory.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "CarbonLink")])
    now = dt.datetime.now(dt.UTC)
    san = x509.SubjectAlternativeName([
        x509.UniformResourceIdentifier(application_uri),
        x509.DNSName(socket.gethostname()),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ])
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=True, key_encipherment=True,
                                     data_encipherment=True, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    stem = common_name.replace(" ", "-")
    cert_path, key_path = directory / f"{stem}.der", directory / f"{stem}.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


class _Users:
    """asyncua user manager: a username needs the right password; anonymous needs a signed channel."""

    def __init__(self, users: dict[str, str], anonymous_plain: bool) -> None:
        self.users = users
        self.anonymous_plain = anonymous_plain

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> User | None:
        if username is not None:
            if self.users.get(username) == password:
                return User(role=UserRole.User, name=username)
            return None  # the session is refused with BadUserAccessDenied
        if certificate or self.anonymous_plain:  # a plain channel passes an empty certificate
            return User(role=UserRole.User)
        return None


@dataclass
class _Fault:
    status: int | None = None  # a Bad/Uncertain status code reported instead of Good
    stuck: float | None = None  # value frozen at this
    until: float | None = None  # monotonic deadline; None = until cleared


class CemsOpcUaServer:
    """A CEMS stack on an OPC-UA server; start/stop/restart and faults are driven at run time."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, interval_s: float = 1.0,
                 stack: CemsStack | None = None, username: str | None = None, password: str | None = None,
                 secure: bool = False, allow_plain: bool = True,
                 trusted_client_certs: Sequence[Path] | None = None, cert_dir: Path | None = None) -> None:
        if (username is None) != (password is None):
            raise ValueError("give both username and password, or neither")
        if not secure and not allow_plain:
            raise ValueError("a server without security must allow plain (unsigned) connections")
        self.host, self.port, self.interval_s = host, port, interval_s
        self.stack = stack or CemsStack()
        self.users = {username: password} if username is not None and password is not None else {}
        self.secure, self.allow_plain = secure, allow_plain
        self.trusted = ({x509.load_der_x509_certificate(Path(p).read_bytes()).fingerprint(hashes.SHA256())
                         for p in trusted_client_certs} if trusted_client_certs is not None else None)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._cert_dir = cert_dir
        self.cert_path: Path | None = None
        self.key_path: Path | None = None
        self.faults: dict[str, _Fault] = {}
        self._last: dict[str, float] = {}
        self.refusing_subscriptions = False
        self.updates = 0
        self.server: Server | None = None
        self._vars: dict[str, Any] = {}
        self._task: asyncio.Task[None] | None = None

    # --- addresses a client needs -----------------------------------------------------

    @property
    def url(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}/carbonlink/cems"

    @property
    def node_ids(self) -> dict[str, str]:
        return {k: f"ns=2;i={FIRST_VARIABLE_ID + i}" for i, k in enumerate(LAYOUT)}

    @property
    def browse_paths(self) -> dict[str, str]:
        return {k: f"0:Objects/2:CEMS/2:Stack1/2:{BROWSE_NAMES[k]}" for k in LAYOUT}

    # --- life cycle -----------------------------------------------------------------

    async def start(self) -> None:
        if self.server is not None:
            return
        if self.port == 0:  # fix the port now so a restart comes back where clients expect it
            with socket.socket() as s:
                s.bind((self.host, 0))
                self.port = int(s.getsockname()[1])
        server = Server(user_manager=_Users(self.users, anonymous_plain=not self.users))  # type: ignore[arg-type]
        await server.init()
        server.set_endpoint(self.url)
        server.set_server_name("CarbonLink CEMS simulator")
        await server.set_application_uri(APP_URI)
        policies = [ua.SecurityPolicyType.NoSecurity] if self.allow_plain else []
        if self.secure:
            self._ensure_certificate()
            assert self.cert_path is not None and self.key_path is not None
            await server.load_certificate(str(self.cert_path))
            await server.load_private_key(str(self.key_path))
            policies += [ua.SecurityPolicyType.Basic256Sha256_Sign,
                         ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt]
            if self.trusted is not None:
                server.set_certificate_validator(self._validate_client)
        server.set_security_policy(policies)
        tokens: list[type] = [ua.AnonymousIdentityToken]
        if self.users:
            tokens.append(ua.UserNameIdentityToken)
        server.set_identity_tokens(tokens)
        server.iserver.max_subscriptions = 0 if self.refusing_subscriptions else 1000
        await self._build(server)
        await server.start()
        self.server = server
        await self._write_all()
        self._task = asyncio.create_task(self._update_loop(), name="cems-opcua updates")
        log.info("CEMS OPC-UA simulator on %s", self.url)

    async def stop(self) -> None:
        """Stop the whole server: connections drop and every session and subscription is lost."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self.server is not None:
            server, self.server = self.server, None
            self._vars = {}
            # asyncua's clock task sleeps 1 s between ticks and stop() waits for it; cancel it instead.
            clock = server.iserver.time_task
            if clock is not None and not clock.done():
                clock.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await clock
            server.iserver.time_task = None
            await server.stop()

    async def restart(self, down_s: float = 0.0) -> None:
        """A device restart: stop, stay down for ``down_s``, start again on the same port."""
        await self.stop()
        await asyncio.sleep(down_s)
        await self.start()

    async def close(self) -> None:
        await self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    async def __aenter__(self) -> CemsOpcUaServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- faults -----------------------------------------------------------------------

    def set_status(self, point: str, status: int | str = "BadSensorFailure",
                   for_s: float | None = None) -> None:
        """Report ``point`` with a Bad/Uncertain status (name or code) until cleared or for ``for_s``."""
        code = getattr(ua.StatusCodes, status) if isinstance(status, str) else int(status)
        f = self.faults.setdefault(self._key(point), _Fault())
        f.status = code
        f.until = time.monotonic() + for_s if for_s is not None else None

    def stick(self, point: str, for_s: float | None = None) -> None:
        """Freeze ``point`` at its current value (timestamps keep moving, as a stuck analyser's do)."""
        key = self._key(point)
        f = self.faults.setdefault(key, _Fault())
        f.stuck = self._last.get(key, 0.0)
        f.until = time.monotonic() + for_s if for_s is not None else None

    def clear(self, point: str | None = None) -> None:
        if point is None:
            self.faults.clear()
        else:
            self.faults.pop(self._key(point), None)

    def refuse_subscriptions(self, refuse: bool = True) -> None:
        """Make CreateSubscription fail with BadTooManySubscriptions, as small embedded servers do."""
        self.refusing_subscriptions = refuse
        if self.server is not None:
            self.server.iserver.max_subscriptions = 0 if refuse else 1000

    def channels(self) -> list[tuple[str, str]]:
        """(security policy, message mode) of each connected client's secure channel."""
        if self.server is None or self.server.bserver is None:
            return []
        out = []
        for proto in self.server.bserver.clients:
            if proto.processor is None:  # still handshaking
                continue
            policy = proto.processor._connection.security_policy  # asyncua keeps no public accessor
            out.append((policy.URI.rsplit("#", 1)[-1], ua.MessageSecurityMode(policy.Mode).name))
        return out

    # --- internals ----------------------------------------------------------------------

    def _key(self, point: str) -> str:
        for k, b in BROWSE_NAMES.items():
            if point in (k, b):
                return k
        raise KeyError(f"unknown CEMS point {point!r}; known: {', '.join(BROWSE_NAMES.values())}")

    def _ensure_certificate(self) -> None:
        if self.cert_path is not None:
            return
        if self._cert_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="cems-opcua-")
            self._cert_dir = Path(self._tmp.name)
        self.cert_path, self.key_path = self_signed_certificate(self._cert_dir, "cems-opcua-sim", APP_URI)

    async def _validate_client(self, cert: x509.Certificate, app: ua.ApplicationDescription) -> None:
        assert self.trusted is not None
        if cert.fingerprint(hashes.SHA256()) not in self.trusted:
            raise ServiceError(ua.StatusCodes.BadCertificateUntrusted)

    async def _build(self, server: Server) -> None:
        idx = await server.register_namespace(NAMESPACE)
        ns = ua.Int16(idx)
        cems = await server.nodes.objects.add_object(ua.NodeId(ua.Int32(1), ns), f"{idx}:CEMS")
        stack1 = await cems.add_object(ua.NodeId(ua.Int32(2), ns), f"{idx}:Stack1")
        for i, key in enumerate(LAYOUT):
            var = await stack1.add_variable(ua.NodeId(ua.Int32(FIRST_VARIABLE_ID + i), ns),
                                            f"{idx}:{BROWSE_NAMES[key]}",
                                            0.0, varianttype=ua.VariantType.Double)
            await var.write_attribute(ua.AttributeIds.Description,
                                      ua.DataValue(ua.Variant(ua.LocalizedText(f"{key} in {UNITS[key]}"))))
            self._vars[key] = var

    async def _write_all(self) -> None:
        assert self.server is not None
        values = self.stack.values()
        sf = self.stack.faults
        if sf.wrong_map:  # every node carries its neighbour's value
            values = {k: values[LAYOUT[(i + 1) % len(LAYOUT)]] for i, k in enumerate(LAYOUT)}
        stack_code = ua.StatusCodes.BadNoCommunication if sf.comm_loss else MODE_STATUS.get(sf.mode)
        self._last = values
        now = cast(ua.DateTime, dt.datetime.now(dt.UTC))
        mono = time.monotonic()
        for key, var in self._vars.items():
            f = self.faults.get(key)
            if f is not None and f.until is not None and mono >= f.until:
                del self.faults[key]
                f = None
            value = values[key] if f is None or f.stuck is None else f.stuck
            code = f.status if f is not None and f.status is not None else stack_code or ua.StatusCodes.Good
            status = ua.StatusCode(ua.UInt32(code))
            dv = ua.DataValue(ua.Variant(value, ua.VariantType.Double), StatusCode=status,
                              SourceTimestamp=now, ServerTimestamp=now)
            await self.server.write_attribute_value(var.nodeid, dv)
        self.updates += 1

    async def _update_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            next_at += self.interval_s
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            try:
                await self._write_all()
            except (ua.UaError, ServiceError) as exc:  # must not stop the simulation
                log.warning("CEMS OPC-UA update failed: %s", exc)


async def run_cems_opcua(port: int, stop_event: asyncio.Event, *, host: str = "127.0.0.1",
                         interval_s: float = 1.0, username: str | None = None, password: str | None = None,
                         secure: bool = False, stack: CemsStack | None = None) -> None:
    """Serve the CEMS stack over OPC-UA until ``stop_event`` is set (``carbonlink sim cems --opcua-port``)."""
    sim = CemsOpcUaServer(host=host, port=port, interval_s=interval_s, stack=stack,
                          username=username, password=password, secure=secure)
    async with sim:
        await stop_event.wait()
