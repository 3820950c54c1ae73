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
from carbonlink.kernel.ids import DEVICE_ID_BODY, ID_BODY, check_account_id

app = typer.Typer(help="Register gateways and devices, issue credentials, write configs.", no_args_is_help=True)

# Device templates an installer picks from: driver settings plus a bundled point map.
TEMPLATES: dict[str, dict[str, Any]] = {
    "cems": {"driver": "modbus_tcp", "pointmap": "cems", "port": 502, "poll_interval_s": 1.0},
    "inverter": {"driver": "modbus_tcp", "pointmap": "inverter", "port": 502, "poll_interval_s": 5.0},
}
_DEVICE_SPEC = re.compile(rf"(?P<id>{DEVICE_ID_BODY})=(?P<template>[a-z_]+)@(?P<host>[^:\s]+)(:(?P<port>\d{{1,5}}))?")


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
    try:  # refused by the cloud too (409); say so before a key is made
        check_account_id("gateway", gateway)
    except ValueError as exc:
        raise fail(str(exc)) from None
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


BROKER_GROUP = "mosquitto"  # the user and group Debian's and the eclipse-mosquitto image's broker runs as


def _group_id(name: str) -> int | None:
    import grp

    if name.isdigit():  # a numeric gid, e.g. 1883 for the eclipse-mosquitto container's group
        return int(name)
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def _user_id(name: str) -> int | None:
    import pwd

    if name.isdigit():
        return int(name)
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


def write_broker_file(path: Path, text: str, *, uid: int, gid: int, mode: int) -> None:
    """Replace ``path`` atomically (a broker reloading on SIGHUP never reads half a file), owned uid:gid."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            if (uid, gid) != (-1, -1):
                os.fchown(f.fileno(), uid, gid)
            os.fchmod(f.fileno(), mode)  # after the chown, which may clear mode bits
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _password_file(file: Path, option: str) -> tuple[str, str]:
    """The password in ``file``, or a new one written there (0600) if it does not exist yet."""
    import secrets

    from carbonlink.kernel.mqtturl import MqttConfigError, read_password_file

    if file.exists():
        try:
            return read_password_file(file, option), str(file)
        except MqttConfigError as exc:
            raise fail(str(exc)) from None
    password = secrets.token_urlsafe(24)
    file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # a service's secret: owner only
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    return password, f"{file} (new)"


def _ingest_password(given: str | None, file: Path | None) -> tuple[str, str]:
    """(password, where it came from): --ingest-password-file (read, or made once), the env, or new."""
    import secrets

    if given is not None and file is not None:
        raise fail("give the ingest password once: CARBONLINK_INGEST_PASSWORD or --ingest-password-file")
    if given is not None:
        return given, "CARBONLINK_INGEST_PASSWORD"
    if file is not None:
        return _password_file(file, "--ingest-password-file")
    return secrets.token_urlsafe(24), "generated"


@app.command("broker-files")
def broker_files(
    db: Annotated[str, typer.Option(help="storage URL")],
    out_dir: Annotated[Path, typer.Option("--out", help="folder for passwd and acl")],
    ingest_password: Annotated[str | None, typer.Option(envvar="CARBONLINK_INGEST_PASSWORD", show_envvar=True,
                                                        help="password of the cloud's own MQTT account")] = None,
    ingest_password_file: Annotated[Path | None, typer.Option(
        help="file with the cloud's MQTT password; made (0600) with a new one if missing. Give the cloud the "
             "same file as CARBONLINK_MQTT_PASSWORD_FILE")] = None,
    reader_password_file: Annotated[Path | None, typer.Option(
        help="add the read-only account carbonlink-reader (Node-RED) with the password in this file; made "
             "(0600) if missing")] = None,
    owner: Annotated[str | None, typer.Option(
        help="user (name or uid) that owns the files (default: whoever runs this)")] = None,
    group: Annotated[str | None, typer.Option(
        help=f"group (name or gid) that may read the files (mode 0640): the broker's, 1883 in the "
             f"eclipse-mosquitto image. Default: {BROKER_GROUP!r} if that group exists, else none (mode 0600)")] = None,
    private: Annotated[bool, typer.Option("--private", help="mode 0600 and no group, for a broker that runs as "
                                                             "the files' owner")] = False,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Write Mosquitto password and ACL files: each gateway may use only its own topics.

    The files hold password hashes, not passwords; they are written atomically, owned by --owner and
    readable by --group (Mosquitto drops to user and group `mosquitto` before it reads them). The
    folder gets the same group, mode 0750. See docs/production.md, "Broker files".
    """
    from carbonlink.cloud.provisioning import (
        INGEST_USER,
        MOSQUITTO_CONF_SNIPPET,
        READER_USER,
        BrokerFilesError,
        mosquitto_password_hash,
    )
    from carbonlink.cloud.provisioning import broker_files as make_files

    if private and group is not None:
        raise fail("--private and --group exclude each other")
    uid = -1
    if owner is not None:
        found_uid = _user_id(owner)
        if found_uid is None:
            raise fail(f"--owner {owner!r}: no such user on this host; give an existing user name")
        uid = found_uid
    gid = -1
    group_name = None if private else (group if group is not None else
                                       (BROKER_GROUP if _group_id(BROKER_GROUP) is not None else None))
    if group_name is not None:
        found_gid = _group_id(group_name)
        if found_gid is None:
            raise fail(f"--group {group_name!r}: no such group on this host; give the group Mosquitto runs as "
                       "(see `ps -o group= -C mosquitto`) or --private")
        gid = found_gid
    mode = 0o640 if group_name is not None else 0o600
    password, source = _ingest_password(ingest_password, ingest_password_file)
    reader = _password_file(reader_password_file, "--reader-password-file")[0] if reader_password_file else None
    reader_hash = mosquitto_password_hash(reader) if reader is not None else None
    try:
        passwd, acl = with_store(db, lambda s: make_files(s, mosquitto_password_hash(password), reader_hash))
    except BrokerFilesError as exc:
        raise fail(str(exc)) from None
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        if (uid, gid) != (-1, -1):
            os.chown(out_dir, uid, gid)
        out_dir.chmod(0o750 if group_name is not None else 0o700)
        for name, text in (("passwd", passwd), ("acl", acl)):
            write_broker_file(out_dir / name, text, uid=uid, gid=gid, mode=mode)
    except PermissionError as exc:
        raise fail(f"cannot give {exc.filename or out_dir} to {owner or 'this user'}:{group_name or '-'} "
                   f"({exc.strerror}): run as root, or choose a --group you belong to, or --private") from None
    data: dict[str, Any] = {
        "passwd": str(out_dir / "passwd"), "acl": str(out_dir / "acl"), "accounts": passwd.count("\n"),
        "owner": owner or "(this user)", "group": group_name or "(none)", "mode": oct(mode),
        "ingest_user": INGEST_USER, "ingest_password_from": source,
        **({"reader_user": READER_USER, "reader_password_file": str(reader_password_file)} if reader else {}),
        **({"ingest_password": password} if source == "generated" else {})}
    _emit(data, json_out, "Mosquitto files")
    if not json_out:
        if source == "generated":
            err.print("The ingest password above is shown once; next time use --ingest-password-file so the "
                      "cloud and the broker keep agreeing.")
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


# A node's device ids are plain ids (the firmware's config rule): no ':' as a gateway's device ids may have.
_SOIL = re.compile(rf"(?P<device>{ID_BODY})@(?P<pin>\d{{1,2}})")
_BLE = re.compile(rf"(?P<mac>([0-9A-Fa-f]{{2}}:){{5}}[0-9A-Fa-f]{{2}})=(?P<device>{ID_BODY})")


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
        check_account_id("node", node_id)
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
