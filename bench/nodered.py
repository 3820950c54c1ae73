"""The peer in bench/ingest.py: Node-RED 4.1 taking the same signed batches from MQTT into PostgreSQL.

What a Node-RED user would build: an ``mqtt in`` node on ``cl/+/+/telemetry`` (QoS 1, acknowledged on
receipt, as Node-RED does), a function node that writes each batch with the ``pg`` driver (the function
node's external module, since no PostgreSQL node package is on this machine's npm registry). It is given
the same table and key as ours: a ``series`` table (gateway, device, point) -> integer id, upserted for
ids it has not cached, and readings ``(series, ts_ms, value, quality, seq)`` with the primary key
(series, ts_ms), in one multi-row INSERT per batch. It verifies no signature, keeps no raw bytes, writes
no batch row, latest value or rollup mark, and acks before it writes, so it does less than the ingest.
Installed once under ``var/``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from carbonlink.commands.faults.lab import stop_process
from carbonlink.kernel.ports import free_port, port_open

ROOT = Path(__file__).resolve().parents[1]
INSTALL = ROOT / "var" / "node-red"
BENCH_DIR = ROOT / "var" / "node-red-bench"

SETTINGS = """module.exports = {
    uiPort: %d, uiHost: "127.0.0.1", flowFile: "flows.json", credentialSecret: false,
    logging: { console: { level: "warn", metrics: false, audit: false } },
    editorTheme: { tours: false, projects: { enabled: false } }, diagnostics: { enabled: false },
    telemetry: { enabled: false },
    externalModules: { autoInstall: true, palette: { allowInstall: false } },
    functionExternalModules: true,
};
"""

FUNCTION = """
let pool = context.get("pool");
if (!pool) { pool = new pg.Pool(%s); context.set("pool", pool); context.set("ids", new Map()); }
const ids = context.get("ids");
const b = JSON.parse(msg.payload);
const want = [];
for (const r of b.readings) {
    const k = b.gateway + "\\u0000" + r.device + "\\u0000" + r.point;
    if (!ids.has(k) && !want.some(w => w.k === k)) want.push({k, d: r.device, p: r.point, u: r.unit});
}
const register = want.length === 0 ? Promise.resolve() : pool.query(
    `INSERT INTO %s(gateway, device, point, unit, created_ms)
     SELECT $1, d, p, u, $2 FROM unnest($3::text[], $4::text[], $5::text[]) AS t(d, p, u)
     ON CONFLICT (gateway, device, point) DO UPDATE SET unit = EXCLUDED.unit RETURNING id, device, point`,
    [b.gateway, Date.now(), want.map(w => w.d), want.map(w => w.p), want.map(w => w.u)])
    .then(res => {
        for (const row of res.rows) ids.set(b.gateway + "\\u0000" + row.device + "\\u0000" + row.point, row.id);
    });
register.then(() => {
    const values = [], params = [];
    let i = 1;
    for (const r of b.readings) {
        values.push(`($${i++},$${i++},$${i++},$${i++},$${i++})`);
        params.push(ids.get(b.gateway + "\\u0000" + r.device + "\\u0000" + r.point), Date.parse(r.ts), r.value,
                    r.quality, b.seq);
    }
    return pool.query(`INSERT INTO %s(series, ts_ms, value, quality, seq) VALUES ${values.join(",")}
                       ON CONFLICT DO NOTHING`, params);
}).then(() => node.done()).catch(err => node.error(err, msg));
return null;
"""


def node_red() -> Path:
    """red.js of Node-RED 4.1 under var/ (installed with npm the first time)."""
    red = INSTALL / "node_modules" / "node-red" / "red.js"
    if not red.exists():
        if not (shutil.which("node") and shutil.which("npm")):
            raise RuntimeError("node and npm are needed for the Node-RED baseline")
        INSTALL.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", "--prefix", str(INSTALL),
                        "node-red@~4.1.0"], check=True, timeout=900)
    return red


def flow(mqtt_port: int, pg: dict[str, object], series: str, table: str) -> list[dict[str, object]]:
    return [
        {"id": "nrb-broker", "type": "mqtt-broker", "name": "bench", "broker": "127.0.0.1", "port": str(mqtt_port),
         "clientid": "nodered-bench", "autoConnect": True, "usetls": False, "protocolVersion": "4",
         "keepalive": "60", "cleansession": True},
        {"id": "nrb-tab", "type": "tab", "label": "bench"},
        {"id": "nrb-in", "type": "mqtt in", "z": "nrb-tab", "topic": "cl/+/+/telemetry", "qos": "1",
         "datatype": "utf8", "broker": "nrb-broker", "nl": False, "rap": True, "inputs": 0, "wires": [["nrb-fn"]]},
        {"id": "nrb-fn", "type": "function", "z": "nrb-tab", "name": "batch to rows",
         "func": FUNCTION % (json.dumps(pg), series, table), "outputs": 1, "timeout": 0, "noerr": 0,
         "libs": [{"var": "pg", "module": "pg"}], "wires": [[]]},
    ]


@contextmanager
def running(mqtt_port: int, pg: dict[str, object], series: str, table: str) -> Iterator[str]:
    """Node-RED with the bench flow deployed; yields its admin URL once the flow is started."""
    red = node_red()
    BENCH_DIR.mkdir(parents=True, exist_ok=True)  # kept: the pg module installs once
    port = free_port()
    (BENCH_DIR / "settings.js").write_text(SETTINGS % port)
    (BENCH_DIR / "flows.json").write_text("[]")
    log = (BENCH_DIR / "node-red.log").open("w")
    proc = subprocess.Popen(["node", str(red), "--settings", str(BENCH_DIR / "settings.js"), "--userDir",
                             str(BENCH_DIR)], env=dict(os.environ), stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while not port_open(port, timeout=0.2):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Node-RED did not start: {(BENCH_DIR / 'node-red.log').read_text()[-2000:]}")
            time.sleep(0.2)
        body = json.dumps(flow(mqtt_port, pg, series, table)).encode()
        req = urllib.request.Request(f"{base}/flows", data=body, method="POST",
                                     headers={"Content-Type": "application/json",
                                              "Node-RED-Deployment-Type": "full"})
        with urllib.request.urlopen(req, timeout=600) as resp:  # the first deploy installs pg
            if resp.status not in (200, 204):
                raise RuntimeError(f"deploy failed: {resp.status}")
        time.sleep(2.0)  # the MQTT node connects and subscribes after the deploy
        yield base
    finally:
        stop_process(proc)
        log.close()
