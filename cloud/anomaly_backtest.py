"""Back-testing an anomaly model on stored history: the same windows and scores a gateway would have made.

Readings of the chosen devices in [start, end) are read series by series (a server-side cursor on
PostgreSQL), merged into time order, and fed through ``carbonlink.anomaly.stream.WindowStream`` exactly
as the gateway's runner feeds polls; give all trees of a plot together so the neighbour relation applies.
Nothing is written: the result says which readings the model would have flagged, as episodes.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from carbonlink.anomaly.model import AnomalyModel
from carbonlink.anomaly.stream import WindowStream
from carbonlink.kernel.wire import Quality, Reading, format_ts

from .store import Store
from .store.model import ReadingQuery

MAX_READINGS = 5_000_000  # one back-test; beyond this, split the time range


@dataclass
class BacktestReport:
    model: dict[str, Any]
    devices: list[str]
    start_ms: int | None
    end_ms: int | None
    readings: int = 0
    judged: int = 0
    flagged: int = 0
    issues: dict[str, int] = field(default_factory=dict)
    episodes: list[dict[str, Any]] = field(default_factory=list)
    per_point: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


async def _series(store: Store, device: str, start_ms: int | None, end_ms: int | None,
                  tenant: str | None) -> list[list[Reading]]:
    out: dict[tuple[str, str], list[Reading]] = {}
    q = ReadingQuery(device=device, start_ms=start_ms, end_ms=end_ms, tenant=tenant)
    async for rows in store.data.stream_readings(q):
        for r in rows:
            key = (r["gateway"], r["point"])
            q_code = r["quality"] if r["quality"] in Quality._value2member_map_ else "N"
            out.setdefault(key, []).append(Reading(device, r["point"], int(r["ts_ms"]), float(r["value"]),
                                                   r["unit"] or "", Quality(q_code)))
    return list(out.values())


async def backtest(store: Store, model: AnomalyModel, devices: Sequence[str], *, start_ms: int | None = None,
                   end_ms: int | None = None, tenant: str | None = None,
                   max_readings: int = MAX_READINGS) -> BacktestReport:
    """Read the history (async), then score it in a worker thread so a service's event loop stays free."""
    report = BacktestReport(model=model.info.provenance() | {"threshold": model.info.threshold},
                            devices=list(devices), start_ms=start_ms, end_ms=end_ms)
    series: list[list[Reading]] = []
    for d in devices:
        series += await _series(store, d, start_ms, end_ms, tenant)
        total = sum(len(s) for s in series)
        if total > max_readings:
            raise ValueError(f"more than {max_readings} readings in range; back-test a shorter range")
    await asyncio.to_thread(_score, report, model, series)
    return report


def _score(report: BacktestReport, model: AnomalyModel, series: list[list[Reading]]) -> None:
    stream = WindowStream()
    merged = heapq.merge(*series, key=lambda r: r.ts_ms)
    poll: list[Reading] = []
    open_eps: dict[tuple[str, str], dict[str, Any]] = {}

    def run(batch: list[Reading]) -> None:
        res = stream.score(batch, model)
        report.judged += len(res.scored)
        for s in res.scored:
            pp = report.per_point.setdefault(f"{s.reading.device}/{s.reading.point}", {"judged": 0, "flagged": 0})
            pp["judged"] += 1
            if s.anomalous:
                pp["flagged"] += 1
                report.flagged += 1
        for i in res.issues:
            report.issues[i.kind] = report.issues.get(i.kind, 0) + 1
        for e in res.episodes:
            key = (e.device, e.point)
            if e.started:
                open_eps[key] = {"device": e.device, "point": e.point, "from": format_ts(e.since_ms), "to": None,
                                 "readings": 0, "peak_score": 0.0}
            elif key in open_eps:
                ep = open_eps.pop(key)
                ep.update({"to": format_ts(e.ts_ms), "readings": e.count, "peak_score": round(e.peak, 4)})
                report.episodes.append(ep)

    for r in merged:
        report.readings += 1
        if poll and r.ts_ms != poll[0].ts_ms:
            run(poll)
            poll = []
        poll.append(r)
    if poll:
        run(poll)
    report.episodes += list(open_eps.values())  # still anomalous at the end of the range
