"""Login benchmark: how long a good login takes alone, and while a flood of bad ones runs.

    .venv/bin/python bench/login.py [--flood 200] [--json]

One run, one SQLite store in a temp folder, the real app over ASGI (no network), three cases:
  alone:        one good login, nothing else running;
  one address:  the good login (its own address) while --flood bad logins for one user come from one
                address at once: the throttle lets its allowance through, the rest get 429 unhashed;
  distributed:  the good login while --flood bad logins for different users come from different
                addresses (the throttle cannot tell them apart): the password pool runs 2 at a time,
                queues 32 and answers 503 beyond.
Prints each latency, the ratio to "alone", and how many answers of each status the flood got.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from carbonlink.cloud.api import create_app  # noqa: E402
from carbonlink.cloud.auth import create_user  # noqa: E402
from carbonlink.cloud.settings import CloudSettings  # noqa: E402
from carbonlink.cloud.store import open_store  # noqa: E402

PW = "correct horse battery staple"


async def timed_login(app: Any, host: str, username: str, password: str) -> tuple[int, float]:
    transport = httpx.ASGITransport(app=app, client=(host, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://b") as c:
        t = time.perf_counter()
        r = await c.post("/api/auth/token", json={"username": username, "password": password})
        return r.status_code, time.perf_counter() - t


async def case(store: Any, flood: int, distributed: bool | None) -> dict[str, Any]:
    app = create_app(store, settings=CloudSettings(environment="production", jwt_secret="b" * 64))
    bad = []
    if distributed is not None:
        for i in range(flood):
            host = f"10.{i // 250}.{i % 250}.1" if distributed else "203.0.113.9"
            user = f"user{i}@acme" if distributed else "ada@acme"
            bad.append(timed_login(app, host, user, f"guess-{i}"))
    good = asyncio.ensure_future(timed_login(app, "198.51.100.7", "bob@acme", PW))
    flood_results = await asyncio.gather(*bad)
    status, seconds = await good
    counts: dict[str, int] = {}
    for code, _ in flood_results:
        counts[str(code)] = counts.get(str(code), 0) + 1
    return {"good_status": status, "good_s": round(seconds, 4), "flood": counts,
            "password_checks": app.state.auth.workers.calls}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flood", type=int, default=200)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        async with open_store(f"sqlite:///{tmp}/bench.sqlite") as store:
            await create_user(store, "bob", "acme", "analyst", PW)
            await create_user(store, "ada", "acme", "analyst", PW)
            out = {"alone": await case(store, args.flood, None),
                   "one_address": await case(store, args.flood, False),
                   "distributed": await case(store, args.flood, True)}
    base = out["alone"]["good_s"] or 1e-9
    for v in out.values():
        v["ratio_to_alone"] = round(v["good_s"] / base, 2)
    if args.json:
        print(json.dumps(out, indent=1))
        return
    print(f"flood of {args.flood} bad logins (measured in this run; shared machines vary):")
    for name, v in out.items():
        print(f"  {name:12s} good login {v['good_status']} in {v['good_s'] * 1000:8.1f} ms"
              f" (x{v['ratio_to_alone']:.2f} of alone); flood answers {v['flood']};"
              f" password checks run {v['password_checks']}")


if __name__ == "__main__":
    asyncio.run(main())
