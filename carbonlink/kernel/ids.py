"""Identifier rules, defined once: what a tenant, site, gateway, user or device may be called.

Tenant, site and gateway ids are parts of MQTT topics and URLs, so they stay within a small, safe
alphabet; device ids may also carry ``:`` (a MAC address, a Modbus ``host:unit``).
"""

from __future__ import annotations

import re

ID_BODY = r"[A-Za-z0-9_.-]{1,64}"  # tenants, sites, gateways, users, API key names, rules, secrets, models
DEVICE_ID_BODY = r"[A-Za-z0-9_.:-]{1,64}"  # devices
ID_PATTERN = f"^{ID_BODY}$"  # the anchored forms, for pydantic and FastAPI `pattern=`; the bodies compose
DEVICE_ID_PATTERN = f"^{DEVICE_ID_BODY}$"  # into larger expressions (a command line's ID=TEMPLATE@HOST)
ID_RE = re.compile(ID_PATTERN)
DEVICE_ID_RE = re.compile(DEVICE_ID_PATTERN)
ID_RULE = "1-64 of A-Z a-z 0-9 _ . -"
DEVICE_ID_RULE = "1-64 of A-Z a-z 0-9 _ . : -"


def check_id(kind: str, value: str) -> str:
    """``value`` if it is a valid id, else ValueError naming the rule."""
    if not isinstance(value, str) or not ID_RE.fullmatch(value):
        raise ValueError(f"{kind} id {value!r} must be {ID_RULE} (it is part of MQTT topics and URLs)")
    return value


# --- broker accounts ---------------------------------------------------------------------------------
# A gateway's (or ESP32 node's) id is also its MQTT user name in the broker files, in one namespace with
# the accounts the cloud itself uses. Those names, and anything under the cloud's own prefix, are never a
# gateway or node id: otherwise a claim for "carbonlink-ingest" would get the cloud's `readwrite cl/#`.
# Mosquitto compares user names byte for byte; reserved names are still compared case-insensitively, so
# no id can pass for the cloud's account to an operator or in a log either.
RESERVED_ACCOUNT_PREFIX = "carbonlink-"  # every account the cloud or its broker files create
RESERVED_ACCOUNTS = frozenset({
    "carbonlink-ingest",  # the cloud's ingest and control link (cloud/provisioning.py INGEST_USER)
    "carbonlink-control", "carbonlink-commands", "carbonlink-anchor", "carbonlink-admin", "carbonlink-reader",
    "admin", "root", "mosquitto", "anonymous",  # broker administration and its own user
})


def is_reserved_account(name: str) -> bool:
    """True if ``name`` is, or may become, one of the cloud's own broker accounts."""
    folded = name.casefold()
    return folded in RESERVED_ACCOUNTS or folded.startswith(RESERVED_ACCOUNT_PREFIX)


def check_account_id(kind: str, value: str) -> str:
    """``value`` if it may name a gateway or node (and so a broker account), else ValueError saying why."""
    check_id(kind, value)
    if is_reserved_account(value):
        raise ValueError(f"{kind} id {value!r} is reserved for the cloud's own broker accounts "
                         f"({RESERVED_ACCOUNT_PREFIX}…, admin, root, mosquitto, anonymous); choose another id")
    return value
