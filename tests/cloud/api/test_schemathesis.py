"""Schemathesis against the OpenAPI spec, authenticated as an admin: no input makes the API answer 500.

Every operation gets valid (positive) and invalid (negative) generated requests; each generated
case is also sent once with real path parameters (acme's site, gateway, device and point), so the
generated queries and bodies reach the handlers instead of stopping at a 404. SQLite only: the
ASGI transport runs the app on its own event loop, which an asyncpg pool cannot cross; the same
handlers run on PostgreSQL in the rest of tests/api.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error

from carbonlink.cloud.api import create_app
from carbonlink.cloud.auth import create_api_key
from carbonlink.cloud.settings import CloudSettings
from carbonlink.cloud.store import Store, open_store
from tests.cloud.api.conftest import JWT_SECRET, METRICS_TOKEN, seed

EXAMPLES = 10
STREAMS = {"/api/live"}
REAL = {"tenant": "acme", "site": "plant-a", "gateway": "gw-a", "gateway_id": "gw-a", "device": "cems-1",
        "point": "so2"}


async def _setup(path: Path) -> tuple[Store, str]:
    store = open_store(f"sqlite:///{path}")
    await store.open()
    await seed(store)
    return store, (await create_api_key(store, "acme", "admin", "schemathesis"))[1]


def test_no_generated_request_gets_a_500(tmp_path: Path) -> None:
    store, key = asyncio.run(_setup(tmp_path / "cloud.sqlite"))
    try:
        app = create_app(store, settings=CloudSettings(environment="production", jwt_secret=JWT_SECRET,
                                                       metrics_token=METRICS_TOKEN))
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        auth = {"Authorization": f"Bearer {key}", "X-API-Key": key}  # generated credentials would only get 401
        # /api/live is a server-sent event stream that ends only when the client leaves: it has no response to
        # judge, and each generated call would hold the run for seconds (tests/cloud/api/test_console_api.py).
        ops = [o for o in (r.ok() for r in schema.get_all_operations()) if o.path not in STREAMS]
        assert len(ops) >= 35, [o.label for o in ops]
        calls: dict[int, int] = {}
        no_negative: list[str] = []
        t = time.perf_counter()
        for op in ops:
            for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
                @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                          suppress_health_check=list(HealthCheck))
                @given(case=op.as_strategy(generation_mode=mode))
                def run(case: Any) -> None:
                    variants = [case]
                    if case.path_parameters and set(case.path_parameters) <= set(REAL):
                        real = case.operation.Case(**{**_fields(case),
                                                      "path_parameters": {k: REAL[k] for k in case.path_parameters}})
                        variants.append(real)
                    for c in variants:
                        headers = {**(c.headers or {}), **auth}
                        response = c.call(headers=headers)
                        calls[response.status_code] = calls.get(response.status_code, 0) + 1
                        c.validate_response(response, checks=[not_a_server_error], headers=headers)

                try:
                    run()
                except Unsatisfiable:
                    # Nothing to make invalid: an operation without parameters or body.
                    assert mode is schemathesis.GenerationMode.NEGATIVE, op.label
                    no_negative.append(op.label)
        seconds = time.perf_counter() - t
        print(f"schemathesis: {len(ops)} operations, {sum(calls.values())} requests in {seconds:.1f} s,"
              f" statuses {dict(sorted(calls.items()))}; no invalid input possible for {len(no_negative)}")
        assert 500 not in calls and calls.get(200, 0) > 50
    finally:
        asyncio.run(store.close())


def _fields(case: Any) -> dict[str, Any]:
    return {"query": case.query, "headers": case.headers, "cookies": case.cookies, "body": case.body,
            "media_type": case.media_type}
