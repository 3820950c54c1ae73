"""The OPC-UA driver against the CEMS simulator over real OPC-UA on loopback (one server per module)."""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from carbonlink.edge.drivers.base import DriverError
from carbonlink.edge.drivers.opcua import OpcUaDevice, OpcUaDriver
from carbonlink.kernel.wire import Quality
from carbonlink.simulators.cems import CemsStack
from carbonlink.simulators.cems_opcua import CemsOpcUaServer
from tests.memgrowth import session_growth
from tests.simulators.clocks import Paced

from .helpers import device, settle_tasks, take

pytestmark = pytest.mark.asyncio(loop_scope="module")
POINTS = ["so2", "nox", "no", "no2", "o2", "co2", "dust", "flow", "temp", "pressure", "moisture", "load"]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sim() -> AsyncIterator[CemsOpcUaServer]:
    async with CemsOpcUaServer(interval_s=0.1, stack=CemsStack(clock=Paced())) as server:
        yield server


@pytest.fixture(autouse=True)
def _no_faults(sim: CemsOpcUaServer) -> None:
    sim.clear()
    sim.refuse_subscriptions(False)


@pytest.mark.parametrize("mode", ["subscribe", "poll"])
async def test_reads_every_point_with_units_and_source_time(sim: CemsOpcUaServer, mode: str) -> None:
    driver = OpcUaDriver("stack1", device(sim, mode=mode))
    before = set(asyncio.all_tasks())
    batches = await take(driver, 4)
    assert [r.point for r in batches[-1]] == POINTS
    last = {r.point: r for r in batches[-1]}
    assert all(r.quality is Quality.NORMAL for r in last.values())
    assert last["flow"].unit == "m³/s" and last["o2"].unit == "%"
    assert 50 < last["load"].value <= 100 and 2 <= last["o2"].value <= 20
    # NOx is NO as NO2 plus NO2 (HJ 75-2017): the simulator's relation survives the protocol
    assert last["nox"].value == pytest.approx(last["no"].value * 46 / 30 + last["no2"].value, rel=1e-9)
    stamps = [b[0].ts_ms for b in batches]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)  # the server's SourceTimestamps
    assert await settle_tasks(before) == []  # the session left no asyncua task behind


async def test_subscribe_pushes_each_sample_once(sim: CemsOpcUaServer) -> None:
    driver = OpcUaDriver("stack1", device(sim, points=["so2"], publishing_interval_s=0.05))
    updates = sim.updates
    batches = await take(driver, 10)
    elapsed_updates = sim.updates - updates
    readings = [r for b in batches for r in b]
    assert len({r.ts_ms for r in readings}) == len(readings)  # no sample twice
    assert len(readings) <= elapsed_updates + 1  # pushed as they change, not polled faster


async def test_browse_paths_resolve_to_the_same_nodes_as_node_ids(sim: CemsOpcUaServer) -> None:
    by_id = await take(OpcUaDriver("a", device(sim, mode="poll")), 1)
    by_path = await take(OpcUaDriver("a", device(sim, by="browse_path", mode="poll")), 1)
    # Same sample (the server updates every 0.1 s): equal timestamps mean equal values.
    assert [r.point for r in by_id[0]] == [r.point for r in by_path[0]]
    for a, b in zip(by_id[0], by_path[0], strict=True):
        if a.ts_ms == b.ts_ms:
            assert a.value == b.value


async def test_unknown_browse_path_is_reported_and_the_rest_still_read(sim: CemsOpcUaServer) -> None:
    s = device(sim, by="browse_path", points=["so2", "o2"])
    nodes = [*s.nodes, {"name": "ghost", "browse_path": "0:Objects/2:CEMS/2:Stack9/2:SO2"}]
    driver = OpcUaDriver("stack1", OpcUaDevice.model_validate({**s.model_dump(), "nodes": nodes}))
    batches = await take(driver, 2)
    assert {r.point for r in batches[-1]} == {"so2", "o2"}
    assert driver.counters.extra["unresolved_nodes"] == 1
    assert "Stack9" in driver.counters.last_error


async def test_no_existing_node_is_a_driver_error(sim: CemsOpcUaServer) -> None:
    s = device(sim, points=["so2"])
    driver = OpcUaDriver("stack1", OpcUaDevice.model_validate(
        {**s.model_dump(), "nodes": [{"name": "ghost", "browse_path": "0:Objects/2:Nowhere"}]}))
    with pytest.raises(DriverError, match="none of the configured nodes"):
        await take(driver, 1)


@pytest.mark.parametrize("mode", ["subscribe", "poll"])
async def test_bad_status_becomes_a_flagged_reading_and_recovers(sim: CemsOpcUaServer, mode: str) -> None:
    driver = OpcUaDriver("stack1", device(sim, mode=mode, points=["so2", "o2"]))
    seen: list[tuple[str, str, float]] = []

    async def run() -> None:
        gen = driver.session()
        try:
            async for batch in gen:
                for r in batch:
                    seen.append((r.point, r.quality.value, r.value))
                so2 = [q for p, q, _ in seen if p == "so2"]
                if len(so2) == 3:
                    sim.set_status("SO2", "BadSensorFailure", for_s=0.5)
                if "D" in so2 and so2[-3:] == ["N", "N", "N"]:
                    return
        finally:
            await gen.aclose()

    await asyncio.wait_for(run(), 10)
    so2 = [(q, v) for p, q, v in seen if p == "so2"]
    flagged = [v for q, v in so2 if q == "D"]
    assert flagged and all(v == 0.0 for v in flagged)  # never a plausible number
    assert all(q == "N" for p, q, _ in seen if p == "o2")  # the other point is unaffected
    assert driver.counters.extra["status_BadSensorFailure"] == len(flagged)


async def test_uncertain_and_out_of_service_statuses_map_to_their_flags(sim: CemsOpcUaServer) -> None:
    sim.set_status("Temp", "UncertainEngineeringUnitsExceeded")
    sim.set_status("Flow", "BadOutOfService")
    sim.set_status("Dust", "BadNoCommunication")
    sim.set_status("O2", "UncertainSensorNotAccurate")
    await asyncio.sleep(0.25)
    batch = (await take(OpcUaDriver("stack1", device(sim, mode="poll")), 1))[0]
    q = {r.point: r for r in batch}
    assert q["temp"].quality is Quality.OVER_RANGE and q["temp"].value > 40  # value kept, flagged
    assert q["flow"].quality is Quality.STOPPED and q["flow"].value == 0
    assert q["dust"].quality is Quality.COMM_FAILURE
    assert q["o2"].quality is Quality.FAULT and q["o2"].value > 0
    assert q["so2"].quality is Quality.NORMAL


async def test_stuck_value_is_still_reported_every_sample(sim: CemsOpcUaServer) -> None:
    sim.stick("SO2")
    await asyncio.sleep(0.15)
    batches = await take(OpcUaDriver("stack1", device(sim, points=["so2"])), 5)
    readings = [r for b in batches for r in b]
    assert len(readings) == 5 and len({r.value for r in readings}) == 1  # same value ...
    assert len({r.ts_ms for r in readings}) == 5  # ... at five sample times (StatusValueTimestamp trigger)


async def test_refused_subscription_falls_back_to_polling(sim: CemsOpcUaServer) -> None:
    sim.refuse_subscriptions()
    driver = OpcUaDriver("stack1", device(sim, mode="subscribe", points=["so2"]))
    gen = driver.session()
    try:
        await asyncio.wait_for(anext(gen), 10)
        assert driver.active_mode == "poll"
    finally:
        await gen.aclose()
    assert driver.counters.extra["subscribe_refused"] == 1


async def test_connection_refused_is_a_driver_error() -> None:
    from tests.services import free_port

    s = OpcUaDevice.model_validate({"id": "x", "driver": "opcua", "endpoint": f"opc.tcp://127.0.0.1:{free_port()}",
                                    "timeout_s": 1, "nodes": [{"name": "a", "node_id": "ns=2;i=10"}]})
    before = set(asyncio.all_tasks())
    with pytest.raises(DriverError):
        await take(OpcUaDriver("x", s), 1)
    assert await settle_tasks(before) == []


async def test_long_poll_run_does_not_grow_memory(sim: CemsOpcUaServer) -> None:
    """Thousands of polls as fast as the server answers: what the client side keeps must not grow."""
    driver = OpcUaDriver("stack1", device(sim, mode="poll", poll_interval_s=0.0001))
    measured = 600  # tracemalloc slows polling about 5x, so it watches the last 600 only
    # The server shares this process; count only the client side (edge code, asyncua client, asyncio).
    skip = [tracemalloc.Filter(False, "*/asyncua/server/*"), tracemalloc.Filter(False, "*/simulators/*")]
    growth, _ = await session_growth(driver.session(), 1000, measured, skip)
    assert driver.counters.rejected == 0
    # Measured: about 13 kB of noise; keeping one Reading per poll adds about 88 kB over 600 polls.
    assert growth < 48_000, f"grew {growth} B over {measured} polls"
