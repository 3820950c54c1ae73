"""`carbonlink provision`: bring a gateway up safely in minutes.

Operator (cloud host or API):  token, broker-files, revoke
Installer (next to the gateway): claim, rotate-key
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
import yaml
from rich.table import Table

from carbonlink.commands.common import err, fail, out, with_store

app = typer.Typer(help="Register gateways and devices, issue credentials, write configs.", no_args_is_help=True)

# Device templates an installer picks from: driver settings plus a bundled point map.
TEMPLATES: dict[str, dict[str, Any]] = {
    "cems": {"driver": "modbus_tcp", "pointmap": "cems", "port": 502, "poll_interval_s": 1.0},
    "inverter": {"driver": "modbus_tcp", "pointmap": "inverter", "port": 502, "poll_interval_s": 5.0},
}
_DEVICE_SPEC = re.compile(r"(?P<id>[A-Za-z0-9_.:-]{1,64})=(?P<template>[a-z_]+)@(?P<host>[^:\s]+)(:(?P<port>\d{1,5}))?")


def _emit(data: dict[str, Any], as_json: bool, title: str) -> None:
    if as_json:
        print(json.dumps(data, indent=2))
        return
    t = Table(title=title, show_header=False)
    for k, v in data.items():
        t.add_row(k, str(v))
    out.print(t)





def parse_device(spec: str) -> dict[str, Any]:
    """``cems-1=cems@10.0.0.20:502`` → a device entry for gateway.yaml."""
    m = _DEVICE_SPEC.fullmatch(spec)
    if not m:
        raise ValueError(f"device {spec!r} must look like ID=TEMPLATE@HOST[:PORT], e.g. cems-1=cems@10.0.0.20:502")
    template = m["template"]
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; choose one of {', '.join(sorted(TEMPLATES))}")
    dev = {"id": m["id"], **TEMPLATES[template], "host": m["host"]}
    if m["port"]:
        dev["port"] = int(m["port"])
    return dev


@app.command()
def token(
    tenant: Annotated[str, typer.Option(help="tenant id")],
    site: Annotated[str, typer.Option(help="site id the gateway will belong to")],
    ttl: Annotated[int, typer.Option(help="seconds the token stays valid")] = 3600,
    db: Annotated[str | None, typer.Option(help="storage URL, when run on the cloud host")] = None,
    api: Annotated[str | None, typer.Option(help="cloud API URL, with --admin-token")] = None,
    admin_token: Annotated[str | None, typer.Option(
        envvar="CARBONLINK_API_KEY", help="an API key of an installer, operator or admin of the tenant")] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Issue a one-time, expiring claim token for one gateway at a site."""
    if (db is None) == (api is None):
        raise fail("give either --db (on the cloud host) or --api with --admin-token (an installer's API key)")
    if db is not None:
        from carbonlink.cloud.provisioning import issue_claim_token
        from carbonlink.cloud.store import ClaimError

        try:
            tok, expires = with_store(db, lambda s: issue_claim_token(s, tenant, site, ttl))
        except ClaimError as exc:
            raise fail(str(exc)) from None
        data = {"token": tok, "tenant": tenant, "site": site, "expires_ms": expires}
    else:
        r = httpx.post(f"{api.rstrip('/')}/api/provision/claim-tokens",  # type: ignore[union-attr]
                       json={"tenant": tenant, "site": site, "ttl_s": ttl},
                       headers={"Authorization": f"Bearer {admin_token or ''}"}, timeout=30)
        if r.status_code != 201:
            raise fail(f"the cloud refused: {r.status_code} {r.json().get('detail', r.text)}")
        data = r.json()
    _emit(data, json_out, "Claim token (give it to the installer; it works once)")


@app.command()
def claim(
    api: Annotated[str, typer.Option(help="cloud API URL, e.g. https://cloud.example")],
    token: Annotated[str | None, typer.Option(help="claim token from the operator")] = None,
    gateway: Annotated[str | None, typer.Option(help="this gateway's id")] = None,
    device: Annotated[list[str] | None, typer.Option(help="ID=TEMPLATE@HOST[:PORT]; repeat per device")] = None,
    mqtt: Annotated[str, typer.Option(help="broker URL the gateway will use")] = "mqtt://127.0.0.1:1883",
    out_dir: Annotated[Path, typer.Option("--out", help="where to write gateway.yaml and the key")] = Path("."),
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Claim this gateway: generate its key here, register it, write gateway.yaml."""
    from carbonlink.edge.identity import load_or_create_key, public_key_hex

    interactive = sys.stdin.isatty() and not json_out
    if token is None:
        token = typer.prompt("Claim token") if interactive else None
    if gateway is None:
        gateway = typer.prompt("Gateway id") if interactive else None
    if not token or not gateway:
        raise fail("--token and --gateway are required (or run interactively)")
    devices = []
    for spec in device or []:
        try:
            devices.append(parse_device(spec))
        except ValueError as exc:
            raise fail(str(exc)) from None
    cfg_path = out_dir / "gateway.yaml"
    if cfg_path.exists():
        raise fail(f"{cfg_path} exists; move it away or choose another --out")
    # The private key is made here and never leaves this machine; only its public half is sent.
    key = load_or_create_key(out_dir / "gateway.key")
    try:
        r = httpx.post(f"{api.rstrip('/')}/api/provision/claim", timeout=30,
                       json={"token": token, "gateway": gateway, "alg": "ed25519", "key": public_key_hex(key)})
    except httpx.HTTPError as exc:
        raise fail(f"cannot reach the cloud at {api}: {exc}; check the URL and the network") from None
    if r.status_code != 201:
        raise fail(f"claim refused ({r.status_code}): {r.json().get('detail', r.text)}")
    res = r.json()
    cfg = {
        "gateway": {"id": gateway, "site": res["site"], "key_file": "gateway.key", "data_dir": "var/edge"},
        "mqtt": {"url": mqtt, "username": res["mqtt"]["username"], "password": res["mqtt"]["password"]},
        "devices": devices,
    }
    fd = os.open(cfg_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # it holds the broker password
    with os.fdopen(fd, "w") as f:
        f.write(f"# Written by `carbonlink provision claim` for tenant {res['tenant']}, site {res['site']}.\n")
        yaml.safe_dump(cfg, f, sort_keys=False, allow_unicode=True)
    summary = {
        "gateway": gateway, "tenant": res["tenant"], "site": res["site"], "public_key": public_key_hex(key),
        "config": str(cfg_path), "key_file": str(out_dir / "gateway.key"), "devices": len(devices),
        "mqtt_user": res["mqtt"]["username"],
        "check": f"carbonlink edge check -c {cfg_path}",
        "run": f"carbonlink edge run -c {cfg_path}",
        "verify": f"{api.rstrip('/')}/api/gateways shows {gateway} online within a minute",
    }
    _emit(summary, json_out, f"Gateway {gateway} claimed")


@app.command("broker-files")
def broker_files(
    db: Annotated[str, typer.Option(help="storage URL")],
    out_dir: Annotated[Path, typer.Option("--out", help="folder for passwd and acl")],
    ingest_password: Annotated[str | None, typer.Option(envvar="CARBONLINK_INGEST_PASSWORD",
                                                        help="password of the cloud's own MQTT account")] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Write Mosquitto password and ACL files: each gateway may use only its own topics."""
    import secrets

    from carbonlink.cloud.provisioning import INGEST_USER, MOSQUITTO_CONF_SNIPPET, mosquitto_password_hash
    from carbonlink.cloud.provisioning import broker_files as make_files

    generated = ingest_password is None
    ingest_password = ingest_password or secrets.token_urlsafe(24)
    passwd, acl = with_store(db, lambda s: make_files(s, mosquitto_password_hash(ingest_password)))
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in (("passwd", passwd), ("acl", acl)):
        fd = os.open(out_dir / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
    data = {"passwd": str(out_dir / "passwd"), "acl": str(out_dir / "acl"),
            "accounts": passwd.count("\n"), "ingest_user": INGEST_USER,
            **({"ingest_password": ingest_password} if generated else {})}
    _emit(data, json_out, "Mosquitto files")
    if not json_out:
        err.print("Add to mosquitto.conf:\n" + MOSQUITTO_CONF_SNIPPET.format(dir=out_dir.resolve()))


@app.command()
def revoke(
    gateway: Annotated[str, typer.Option(help="gateway id")],
    db: Annotated[str, typer.Option(help="storage URL")],
) -> None:
    """Revoke a gateway: ingest refuses its batches; regenerate broker files to drop its account."""
    from carbonlink.cloud.store import Store

    async def go(s: Store) -> bool:
        return await s.registry.set_revoked(gateway, True)

    if not with_store(db, go):
        raise fail(f"gateway {gateway!r} is not registered")
    err.print(f"revoked {gateway}; now run `carbonlink provision broker-files` and reload Mosquitto")


@app.command("rotate-key")
def rotate_key(
    config: Annotated[Path, typer.Option("--config", "-c", help="gateway.yaml")],
    api: Annotated[str, typer.Option(help="cloud API URL")],
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Replace this gateway's key: the old key signs the new one, then the key file is swapped."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from carbonlink.cloud.provisioning import rotation_message
    from carbonlink.edge.config import load_gateway_config
    from carbonlink.edge.identity import load_or_create_key, public_key_hex

    cfg = load_gateway_config(config)
    old = load_or_create_key(cfg.gateway.key_file)
    new = Ed25519PrivateKey.generate()
    new_hex = public_key_hex(new)
    sig = old.sign(rotation_message(cfg.gateway.id, new_hex)).hex()
    r = httpx.post(f"{api.rstrip('/')}/api/gateways/{cfg.gateway.id}/rotate-key",
                   json={"public_key": new_hex, "signature": sig}, timeout=30)
    if r.status_code != 200:
        raise fail(f"rotation refused ({r.status_code}): {r.json().get('detail', r.text)}")
    kf = cfg.gateway.key_file
    kf.replace(kf.with_suffix(kf.suffix + ".old"))
    pem = new.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(kf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    _emit({"gateway": cfg.gateway.id, "old_key": public_key_hex(old), "new_key": new_hex,
           "next": "restart the agent to sign with the new key"}, json_out, "Key rotated")


_SOIL = re.compile(r"(?P<device>[A-Za-z0-9_.-]{1,64})@(?P<pin>\d{1,2})")
_BLE = re.compile(r"(?P<mac>([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2})=(?P<device>[A-Za-z0-9_.-]{1,64})")


def node_sensors(soil: list[str], bthome: list[str], extra: Path | None) -> list[dict[str, Any]]:
    """Sensor entries for the firmware's config.json (keys: firmware/README.md)."""
    sensors: list[dict[str, Any]] = []
    for i, spec in enumerate(soil):
        m = _SOIL.fullmatch(spec)
        if not m:
            raise ValueError(f"--soil {spec!r} must look like DEVICE@PIN, e.g. tree-0007@34")
        # Capacitive probe on an ADC pin; dry/wet are typical raw read_u16 values, recalibrate on site.
        sensors.append({"id": f"soil{i + 1}", "kind": "soil_adc", "device": m["device"], "pin": int(m["pin"]),
                        "dry": 52000, "wet": 21000})
    if bthome:
        devices = {}
        for spec in bthome:
            m = _BLE.fullmatch(spec)
            if not m:
                raise ValueError(f"--bthome {spec!r} must look like MAC=DEVICE, e.g. A4:C1:38:12:34:56=tree-7-air")
            devices[m["mac"].upper()] = m["device"]
        sensors.append({"id": "ble", "kind": "bthome", "scan_ms": 5000, "devices": devices})
    if extra is not None:
        loaded = json.loads(extra.read_text("utf-8"))
        if not isinstance(loaded, list):
            raise ValueError(f"{extra}: must hold a JSON list of sensor objects (see firmware/README.md)")
        sensors.extend(loaded)
    if not sensors:
        raise ValueError("give at least one sensor: --soil, --bthome or --sensors-json")
    ids = [s.get("id") for s in sensors]
    if len(set(ids)) != len(ids):
        raise ValueError(f"sensor ids must be unique, got {ids}")
    return sensors


@app.command()
def node(
    api: Annotated[str, typer.Option(help="cloud API URL")],
    token: Annotated[str, typer.Option(help="claim token from the operator")],
    node_id: Annotated[str, typer.Option("--node", help="this node's id")],
    mqtt_host: Annotated[str, typer.Option(help="broker host the node connects to")],
    mqtt_port: Annotated[int | None, typer.Option(help="broker port (8883 with --tls, else 1883)")] = None,
    tls: Annotated[bool, typer.Option(help="connect with TLS")] = False,
    wifi_ssid: Annotated[str | None, typer.Option(help="Wi-Fi network")] = None,
    wifi_password: Annotated[str | None, typer.Option(help="Wi-Fi password")] = None,
    soil: Annotated[list[str] | None, typer.Option(help="ADC soil probe DEVICE@PIN; repeatable")] = None,
    bthome: Annotated[list[str] | None, typer.Option(help="BTHome sensor MAC=DEVICE; repeatable")] = None,
    sensors_json: Annotated[Path | None, typer.Option(help="more sensor objects, a JSON list")] = None,
    sample_interval: Annotated[int, typer.Option(help="seconds between wakes")] = 300,
    uplink_every: Annotated[int, typer.Option(help="connect on every n-th wake")] = 1,
    out: Annotated[Path, typer.Option(help="config.json to write")] = Path("config.json"),
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Provision an ESP32 node: make its HMAC secret, register it, write the config.json mpremote copies."""
    import secrets as pysecrets

    try:
        sensors = node_sensors(soil or [], bthome or [], sensors_json)
    except (ValueError, OSError) as exc:
        raise fail(str(exc)) from None
    if out.exists():
        raise fail(f"{out} exists; move it away or choose another --out")
    secret = pysecrets.token_bytes(32).hex()
    try:
        r = httpx.post(f"{api.rstrip('/')}/api/provision/claim", timeout=30,
                       json={"token": token, "gateway": node_id, "alg": "hmac-sha256", "key": secret})
    except httpx.HTTPError as exc:
        raise fail(f"cannot reach the cloud at {api}: {exc}; check the URL and the network") from None
    if r.status_code != 201:
        raise fail(f"claim refused ({r.status_code}): {r.json().get('detail', r.text)}")
    res = r.json()
    cfg: dict[str, Any] = {
        "node_id": node_id, "site": res["site"], "secret_hex": secret,
        "mqtt": {"host": mqtt_host, "port": mqtt_port or (8883 if tls else 1883), "tls": tls,
                 "user": res["mqtt"]["username"], "password": res["mqtt"]["password"]},
        "sample_interval_s": sample_interval, "uplink_every": uplink_every, "sensors": sensors,
    }
    if wifi_ssid:
        cfg["wifi"] = {"ssid": wifi_ssid, "password": wifi_password or ""}
    out.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # holds the node's secret
    with os.fdopen(fd, "w") as f:
        json.dump(cfg, f, indent=1)
    _emit({"node": node_id, "tenant": res["tenant"], "site": res["site"], "config": str(out),
           "sensors": len(sensors), "mqtt": f"{mqtt_host}:{cfg['mqtt']['port']}{' (TLS)' if tls else ''}",
           "deploy": f"mpremote connect PORT fs cp {out} :config.json (modules: firmware/README.md, Deploy)",
           "check": f"{api.rstrip('/')}/api/gateways shows {node_id}; its first batch after {sample_interval} s"},
          json_out, f"Node {node_id} provisioned")
