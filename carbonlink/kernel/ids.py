"""Identifier rules, defined once: what a tenant, site, gateway, user or device may be called.

Tenant, site and gateway ids are parts of MQTT topics and URLs, so they stay within a small, safe
alphabet; device ids may also carry ``:`` (a MAC address, a Modbus ``host:unit``).
"""

from __future__ import annotations

import re

ID_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"  # tenants, sites, gateways, users, API key names, rules
DEVICE_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"  # devices
ID_RE = re.compile(ID_PATTERN)
DEVICE_ID_RE = re.compile(DEVICE_ID_PATTERN)
ID_RULE = "1-64 of A-Z a-z 0-9 _ . -"
DEVICE_ID_RULE = "1-64 of A-Z a-z 0-9 _ . : -"


def check_id(kind: str, value: str) -> str:
    """``value`` if it is a valid id, else ValueError naming the rule."""
    if not isinstance(value, str) or not ID_RE.fullmatch(value):
        raise ValueError(f"{kind} id {value!r} must be {ID_RULE} (it is part of MQTT topics and URLs)")
    return value
