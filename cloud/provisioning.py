"""Identity and provisioning: claim tokens, broker credentials and ACLs, key rotation and revocation.

A gateway generates its own Ed25519 key; an installer redeems a one-time,
expiring claim token (issued for a tenant and site) to register the public key.
The cloud answers with a per-gateway MQTT username and password; only the
password's hash is kept, in Mosquitto's own password-file format, so the broker
files can be regenerated at any time from the registry.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from carbonlink.kernel import topics
from carbonlink.kernel.ids import ID_RE, check_account_id, is_reserved_account
from carbonlink.kernel.wire import SigAlg, now_ms

from .store import ClaimError, Store

TOKEN_PREFIX = "clt_"
MOSQUITTO_ITERATIONS = 20_000  # mosquitto_passwd uses 101; more costs ~10 ms per connect and slows guessing
INGEST_USER = "carbonlink-ingest"  # the cloud: ingest, control link, rules (readwrite cl/#)
READER_USER = "carbonlink-reader"  # optional: an external consumer such as Node-RED (read-only, own outbox)
READER_READ = ("+/+/telemetry", "+/+/events", "+/+/rules/#")
READER_WRITE = "carbonlink/nodered/#"  # where the shipped Node-RED flow publishes for operators
_ID = ID_RE
_HEX64 = re.compile(r"[0-9a-f]{64}")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_claim_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(24)


async def issue_claim_token(store: Store, tenant: str, site: str, ttl_s: int) -> tuple[str, int]:
    """A one-time token for claiming one gateway at ``site``; returns (token, expires_ms).

    Only its SHA-256 is stored: a leaked database does not leak usable tokens.
    """
    for name, value in (("tenant", tenant), ("site", site)):
        if not _ID.fullmatch(value):
            raise ClaimError(f"{name} id {value!r} must be 1-64 of A-Z a-z 0-9 _ . -")
    if not 60 <= ttl_s <= 30 * 24 * 3600:
        raise ClaimError("ttl must be between 60 seconds and 30 days")
    token = new_claim_token()
    now = now_ms()
    expires = now + ttl_s * 1000
    await store.registry.add_claim_token(hash_token(token), tenant, site, now, expires)
    return token, expires


def mosquitto_password_hash(password: str, *, iterations: int = MOSQUITTO_ITERATIONS, salt: bytes | None = None) -> str:
    """The ``$7$`` entry mosquitto_passwd writes: PBKDF2-HMAC-SHA512 with a 12-byte salt (Mosquitto 2)."""
    salt = salt or secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def check_mosquitto_password(password: str, entry: str) -> bool:
    try:
        _, alg, iterations, salt, digest = entry.split("$")
    except ValueError:
        return False
    if alg != "7":
        return False
    got = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt), int(iterations))
    return hmac.compare_digest(base64.b64encode(got).decode(), digest)


@dataclass(frozen=True)
class ClaimResult:
    tenant: str
    site: str
    gateway: str
    mqtt_username: str
    mqtt_password: str  # shown once, never stored


async def claim(store: Store, token: str, gateway_id: str, alg: str, key_hex: str) -> ClaimResult:
    """Redeem ``token`` to register ``gateway_id`` with its public key (or, for a node, its HMAC secret)."""
    if not _ID.fullmatch(gateway_id):
        raise ClaimError(f"gateway id {gateway_id!r} must be 1-64 of A-Z a-z 0-9 _ . -")
    try:  # the id becomes a broker user name: never one of the cloud's own accounts (issue 10 §2)
        check_account_id("gateway", gateway_id)
    except ValueError as exc:
        raise ClaimError(str(exc)) from None
    if alg == SigAlg.ED25519:
        if not _HEX64.fullmatch(key_hex):
            raise ClaimError("public key must be 64 lowercase hex digits (raw Ed25519)")
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(key_hex))
    elif alg == SigAlg.HMAC_SHA256:
        if not re.fullmatch(r"[0-9a-f]{64,128}", key_hex):
            raise ClaimError("HMAC secret must be 32 to 64 bytes, as lowercase hex")
    else:
        raise ClaimError(f"alg must be ed25519 or hmac-sha256, not {alg!r}")
    password = secrets.token_urlsafe(24)
    tenant, site = await store.registry.redeem_claim(hash_token(token), gateway_id, alg, key_hex, gateway_id,
                                            mosquitto_password_hash(password), now_ms())
    return ClaimResult(tenant, site, gateway_id, gateway_id, password)


def rotation_message(gateway_id: str, new_key_hex: str) -> bytes:
    """What the old key signs to authorise its successor."""
    return f"carbonlink-rotate-key:{gateway_id}:{new_key_hex}".encode()


async def rotate_key(store: Store, gateway_id: str, new_key_hex: str, signature_hex: str) -> None:
    """Replace a gateway's key, authorised by a signature of its current key.

    The old key stays valid for batches already signed (KEY_GRACE_MS), so the
    gateway's outbox drains without refusals.
    """
    rec = await store.registry.get_gateway(gateway_id)
    if rec is None:
        raise ClaimError(f"gateway {gateway_id!r} is not registered")
    if rec.revoked:
        raise ClaimError(f"gateway {gateway_id!r} is revoked; a revoked gateway cannot rotate its key")
    if rec.alg != SigAlg.ED25519:
        raise ClaimError("only Ed25519 gateways rotate keys this way; re-provision HMAC nodes")
    if not _HEX64.fullmatch(new_key_hex):
        raise ClaimError("new public key must be 64 lowercase hex digits")
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(rec.key)).verify(
            bytes.fromhex(signature_hex), rotation_message(gateway_id, new_key_hex))
    except (InvalidSignature, ValueError):
        raise ClaimError("rotation signature does not verify with the gateway's current key") from None
    await store.registry.rotate_key(gateway_id, new_key_hex, now_ms())


@dataclass(frozen=True)
class ReKeyResult:
    tenant: str | None
    site: str
    gateway: str
    mqtt_username: str
    mqtt_password: str  # shown once, never stored


def check_key(alg: str, key_hex: str) -> None:
    """Refuse a key that cannot be the gateway's: raw Ed25519 public key, or an HMAC secret of 32-64 bytes."""
    if alg == SigAlg.ED25519:
        if not _HEX64.fullmatch(key_hex):
            raise ClaimError("public key must be 64 lowercase hex digits (raw Ed25519)")
        try:
            Ed25519PublicKey.from_public_bytes(bytes.fromhex(key_hex))
        except ValueError:
            raise ClaimError("public key is not an Ed25519 point") from None
    elif alg == SigAlg.HMAC_SHA256:
        if not re.fullmatch(r"[0-9a-f]{64,128}", key_hex) or len(key_hex) % 2:
            raise ClaimError("HMAC secret must be 32 to 64 bytes, as lowercase hex")
    else:
        raise ClaimError(f"alg must be ed25519 or hmac-sha256, not {alg!r}")


def key_fingerprint(alg: str, key_hex: str) -> str:
    """What the audit log keeps of a key: a public key's first 16 digits; nothing of a secret."""
    return f"ed25519:{key_hex[:16]}" if alg == SigAlg.ED25519 else f"{alg}:(secret)"


async def re_key(store: Store, gateway_id: str, alg: str, key_hex: str, *, actor: str, reason: str,
                 tenant: str | None = None) -> ReKeyResult:
    """An operator replaces a gateway's key and broker password (lost or stolen key), with an audit record.

    ``tenant`` (the caller's) must own the gateway when given. The old key stops at once (no grace),
    and the gateway gets a new broker password, shown once.
    """
    check_key(alg, key_hex)
    reason = reason.strip()
    if not 3 <= len(reason) <= 500:
        raise ClaimError("give a reason of 3 to 500 characters: it goes into the audit log")
    rec = await store.registry.get_gateway(gateway_id)
    if rec is None or (tenant is not None and rec.tenant != tenant):
        raise ClaimError(f"gateway {gateway_id!r} is not registered")
    password = secrets.token_urlsafe(24)
    now = now_ms()
    before = await store.registry.re_key(gateway_id, alg, key_hex, mosquitto_password_hash(password), now)
    await store.audit.record(actor, "gateway.re-key", tenant=before.tenant, subject=gateway_id, ts_ms=now,
                             detail={"reason": reason, "old": key_fingerprint(before.alg, before.key),
                                     "new": key_fingerprint(alg, key_hex), "broker_password": "replaced"})
    return ReKeyResult(before.tenant, before.site, gateway_id, gateway_id, password)


# --- broker files ----------------------------------------------------------------------------------

GATEWAY_PUBLISH = (topics.TELEMETRY, topics.STATUS, topics.EVENTS, topics.SHADOW_GET, topics.SHADOW_UPDATE,
                   topics.COMMAND_RESULT, topics.RULESET_GET, topics.MODEL_GET,
                   "rules/#")  # rules/#: a rule's republish action
GATEWAY_SUBSCRIBE = (topics.ACK, "shadow/get/accepted", "shadow/update/accepted", "shadow/update/rejected",
                     "shadow/update/delta", f"{topics.COMMAND}/#", topics.RULESET,
                     topics.MODEL)


def acl_for_gateway(site: str, gateway: str) -> list[str]:
    prefix = f"{topics.ROOT}/{site}/{gateway}"
    lines = [f"user {gateway}"]
    lines += [f"topic write {prefix}/{t}" for t in GATEWAY_PUBLISH]
    lines += [f"topic read {prefix}/{t}" for t in GATEWAY_SUBSCRIBE]
    return lines


class BrokerFilesError(ValueError):
    """The registry holds accounts that cannot go into one password file; nothing is written."""


async def broker_files(store: Store, ingest_password_hash: str,
                       reader_password_hash: str | None = None) -> tuple[str, str]:
    """Mosquitto ``password_file`` and ``acl_file`` contents for every non-revoked gateway.

    Refuses (BrokerFilesError) rather than write a user twice: Mosquitto would take one of the entries
    and the ACL blocks of both would add up, so a gateway named like the cloud's account, or two accounts
    sharing a user name, would get each other's rights. Also refused: a gateway account whose user name
    is reserved for the cloud (registered before the reservation, or written into the store by hand).
    """
    passwd = [f"{INGEST_USER}:{ingest_password_hash}"]
    acl = ["# Generated by `carbonlink provision broker-files`; regenerate, do not edit.",
           "# Cloud services read and write everything under the CarbonLink prefix.",
           f"user {INGEST_USER}", f"topic readwrite {topics.ROOT}/#", ""]
    seen: dict[str, str] = {INGEST_USER: "the cloud's own account"}
    if reader_password_hash is not None:
        passwd.append(f"{READER_USER}:{reader_password_hash}")
        acl += ["# A read-only consumer (Node-RED): gateways' telemetry, events and rule output, and its own outbox.",
                f"user {READER_USER}", *(f"topic read {topics.ROOT}/{t}" for t in READER_READ),
                f"topic write {READER_WRITE}", ""]
        seen[READER_USER] = "the read-only consumer account"
    problems: list[str] = []
    for acc in await store.registry.broker_accounts():
        if acc["revoked"]:
            continue  # a revoked gateway loses its broker account too
        user, gw = acc["mqtt_username"], acc["id"]
        if user in seen:
            problems.append(f"user {user!r} of gateway {gw!r} is already used by {seen[user]}")
            continue
        if is_reserved_account(user) or user != gw or not _ID.fullmatch(user):
            problems.append(f"gateway {gw!r} has broker user {user!r}, which is reserved for the cloud or is "
                            "not its own id")
            continue
        seen[user] = f"gateway {gw!r}"
        passwd.append(f"{user}:{acc['mqtt_password_hash']}")
        acl += [*acl_for_gateway(acc["site"], gw), ""]
    if problems:
        raise BrokerFilesError("broker files not written: " + "; ".join(problems)
                               + ". Revoke these gateways (`carbonlink provision revoke --gateway ID`) and claim "
                               "them again under other ids")
    return "\n".join(passwd) + "\n", "\n".join(acl)


MOSQUITTO_CONF_SNIPPET = """\
# Per-gateway credentials and ACLs from `carbonlink provision broker-files --out {dir}`
# (files 0640, group mosquitto: the broker opens them after dropping to user mosquitto)
per_listener_settings false
allow_anonymous false
password_file {dir}/passwd
acl_file {dir}/acl
# Reload after regenerating: kill -HUP $(pidof mosquitto)

# TLS for gateways and the cloud (docs/production.md, TLS); the cloud then uses
# --mqtt "mqtts://HOST:8883?cafile=/path/ca.crt" with CARBONLINK_MQTT_USERNAME and CARBONLINK_MQTT_PASSWORD_FILE
# listener 8883
# use_username_as_clientid true   # gateways only: no one takes over another client's id; give the cloud
#                                 # its own listener without it (docs/production.md, Known limits)
# cafile /etc/mosquitto/certs/ca.crt
# certfile /etc/mosquitto/certs/server.crt
# keyfile /etc/mosquitto/certs/server.key
# tls_version tlsv1.2
"""
