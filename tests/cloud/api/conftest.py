"""One API suite, two back ends: SQLite on a temp file and PostgreSQL in a throwaway schema.

Two tenants with the same device ids, so isolation is tested where it could leak: acme owns gw-a
at plant-a, other owns gw-b at plant-b; both have a device cems-1 with points so2 and nox.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from carbonlink.cloud.api import create_app
from carbonlink.cloud.auth import create_api_key
from carbonlink.cloud.metrics import Metrics, instrument
from carbonlink.cloud.settings import CloudSettings
from carbonlink.cloud.store import ROLES, Store
from carbonlink.edge.identity import public_key_hex
from carbonlink.kernel.wire import Batch, Reading, sign_batch
from tests.cloud.store.conftest import throwaway_store

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
KEYS = {"gw-a": Ed25519PrivateKey.generate(), "gw-b": Ed25519PrivateKey.generate()}
METRICS_TOKEN = "m" * 40
JWT_SECRET = "j" * 40


@pytest.fixture(params=["sqlite", "postgres"])
async def raw_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with throwaway_store(request.param, tmp_path, "clapi_") as s:
        yield s


def signed(gateway: str, seq: int, readings: list[Reading]) -> Batch:
    return sign_batch(Batch(gateway, seq, T0 + seq * 1000, tuple(readings)), KEYS[gateway])


async def seed(store: Store) -> None:
    for gw, tenant, site in (("gw-a", "acme", "plant-a"), ("gw-b", "other", "plant-b")):
        await store.registry.register_gateway(gw, site, "ed25519", public_key_hex(KEYS[gw]), tenant=tenant)
        for seq in range(1, 4):
            rs = [Reading.make("cems-1", p, T0 + (seq * 10 + i) * 1000, seq * 10 + i, "mg/m³")
                  for i in range(10) for p in ("so2", "nox")]
            b = signed(gw, seq, rs)
            await store.data.commit_batch(b, b.to_bytes(), T0 + seq * 1000)


@dataclass
class Api:
    client: httpx.AsyncClient
    store: Store
    metrics: Metrics
    settings: CloudSettings
    keys: dict[str, str]  # role -> API key of tenant acme; "other-admin" -> admin of tenant other

    def as_(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[role]}"}


@pytest.fixture
async def api(raw_store: Store) -> AsyncIterator[Api]:
    await seed(raw_store)
    metrics = Metrics()
    store = raw_store
    instrument(store, metrics)
    settings = CloudSettings(environment="production", jwt_secret=JWT_SECRET, metrics_token=METRICS_TOKEN,
                             max_body_bytes=64 * 1024)
    keys = {role: (await create_api_key(store, "acme", role, f"{role} key"))[1] for role in ROLES}
    keys["other-admin"] = (await create_api_key(store, "other", "admin", "other admin"))[1]
    app = create_app(store, settings=settings, metrics=metrics)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        yield Api(c, store, metrics, settings, keys)
