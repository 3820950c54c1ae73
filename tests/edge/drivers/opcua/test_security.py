"""OPC-UA security: username/password and Basic256Sha256 certificates, good and bad, on one server."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from carbonlink.edge.drivers.base import DriverError
from carbonlink.edge.drivers.opcua import OpcUaDriver
from carbonlink.simulators.cems import CemsStack
from carbonlink.simulators.cems_opcua import CemsOpcUaServer, self_signed_certificate
from tests.simulators.clocks import Paced

from .helpers import device, settle_tasks, take

pytestmark = pytest.mark.asyncio(loop_scope="module")
USER, PASSWORD = "operator", "s3cret-Pa55"


@dataclass
class Certs:
    cert: Path
    key: Path
    stranger_cert: Path  # same application URI, not in the server's trust list
    stranger_key: Path


@pytest.fixture(scope="module")
def certs() -> Iterator[Certs]:
    with tempfile.TemporaryDirectory() as d:
        cert, key = self_signed_certificate(Path(d) / "edge", "carbonlink-edge", "urn:carbonlink:edge",
                                            client=True)
        s_cert, s_key = self_signed_certificate(Path(d) / "stranger", "stranger", "urn:carbonlink:edge",
                                                client=True)
        yield Certs(cert, key, s_cert, s_key)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sim(certs: Certs) -> AsyncIterator[CemsOpcUaServer]:
    # Plain channels need a username; a signed channel from a trusted certificate may be anonymous.
    async with CemsOpcUaServer(interval_s=0.1, stack=CemsStack(clock=Paced()), username=USER, password=PASSWORD,
                               secure=True, trusted_client_certs=[certs.cert]) as server:
        yield server


async def test_username_and_password_over_a_plain_channel(sim: CemsOpcUaServer) -> None:
    batches = await take(OpcUaDriver("s", device(sim, points=["so2"], username=USER, password=PASSWORD)), 2)
    assert batches[-1][0].point == "so2" and batches[-1][0].quality.value == "N"


@pytest.mark.parametrize(("user", "password"), [(USER, "wrong"), ("intruder", PASSWORD), (None, None)])
async def test_wrong_password_unknown_user_or_anonymous_is_refused(
        sim: CemsOpcUaServer, user: str | None, password: str | None) -> None:
    before = set(asyncio.all_tasks())
    driver = OpcUaDriver("s", device(sim, points=["so2"], username=user, password=password))
    with pytest.raises(DriverError, match="BadUserAccessDenied"):
        await take(driver, 1)
    assert await settle_tasks(before) == []


@pytest.mark.parametrize("mode", ["Sign", "SignAndEncrypt"])
async def test_certificate_secures_the_channel(sim: CemsOpcUaServer, certs: Certs, mode: str) -> None:
    driver = OpcUaDriver("s", device(sim, points=["so2", "o2"], certificate=certs.cert, private_key=certs.key,
                                     security_mode=mode))
    gen = driver.session()
    try:
        batch = await asyncio.wait_for(anext(gen), 10)
        assert [r.point for r in batch] == ["so2", "o2"]
        assert ("Basic256Sha256", mode) in sim.channels()  # the server sees a secured channel
        assert ("None", "None_") not in sim.channels()
    finally:
        await gen.aclose()


async def test_certificate_and_username_with_a_pinned_server_certificate(
        sim: CemsOpcUaServer, certs: Certs) -> None:
    assert sim.cert_path is not None
    driver = OpcUaDriver("s", device(sim, points=["so2"], mode="poll", certificate=certs.cert,
                                     private_key=certs.key, server_certificate=sim.cert_path,
                                     username=USER, password=PASSWORD))
    assert len(await take(driver, 2)) == 2


async def test_untrusted_client_certificate_is_refused(sim: CemsOpcUaServer, certs: Certs) -> None:
    driver = OpcUaDriver("s", device(sim, points=["so2"], certificate=certs.stranger_cert,
                                     private_key=certs.stranger_key))
    with pytest.raises(DriverError, match="BadCertificateUntrusted"):
        await take(driver, 1)


async def test_wrong_pinned_server_certificate_fails(sim: CemsOpcUaServer, certs: Certs) -> None:
    # The gateway expects another server: it encrypts for a key the real server does not hold.
    driver = OpcUaDriver("s", device(sim, points=["so2"], certificate=certs.cert, private_key=certs.key,
                                     server_certificate=certs.stranger_cert, timeout_s=1.0))
    with pytest.raises(DriverError):
        await take(driver, 1)
