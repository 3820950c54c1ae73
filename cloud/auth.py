"""Who may call the API: API keys and login tokens (JWT), roles scoped to one tenant.

Credentials, either header:
- ``Authorization: Bearer <api key or login token>``
- ``X-API-Key: <api key>``

An API key is ``clk_<id>_<secret>``: shown once when made; the cloud keeps only SHA-256 of the
secret (it is 256 random bits, so a slow hash would add nothing but latency). A login token is an
HS256 JWT (RFC 7519) from ``POST /api/auth/token`` with a username and password; passwords are
kept as argon2id hashes (RFC 9106), checked on a small thread pool of their own (``PasswordWorkers``)
so logins never block the event loop and a flood of them waits in a bounded queue. Logins are
throttled per user and per address (cloud/throttle.py): 429 with Retry-After.

A username is unique within its tenant: two tenants may both have an ``ada``. A login names the
tenant as ``ada@acme`` (or the ``tenant`` field); a bare ``ada`` still works while only one tenant
has that name. Every principal belongs to one tenant; anything of another tenant answers 404, as if
it did not exist.

What each role may do (``ROLE_PERMISSIONS``):

| permission | admin | operator | installer | analyst | auditor |
|---|---|---|---|---|---|
| read: tenants, sites, gateways, devices, points, readings, rollups, proofs, shadows | yes | yes | yes | yes | yes |
| audit: dead letters, sequence gaps, late batches | yes | yes | yes | - | yes |
| control: patch shadows, send commands | yes | yes | - | - | - |
| provision: create sites, issue claim tokens, revoke gateways | yes | yes | yes | - | - |
| manage: users and API keys of the tenant | yes | - | - | - | - |

Analysts and auditors are read-only. ``/health`` is open; ``/metrics`` takes its own scrape token.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated, Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from .settings import CloudSettings
from .store import ROLES, Store
from .throttle import LoginThrottle

KEY_PREFIX = "clk_"
JWT_ALG = "HS256"
_hasher = PasswordHasher()
# Verified when the user does not exist, so a login takes as long whether or not the name is known.
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))


class Permission(enum.StrEnum):
    READ = "read"
    AUDIT = "audit"
    CONTROL = "control"
    PROVISION = "provision"
    MANAGE = "manage"


P = Permission
ROLE_PERMISSIONS: dict[str, frozenset[Permission]] = {
    "admin": frozenset(Permission),
    "operator": frozenset({P.READ, P.AUDIT, P.CONTROL, P.PROVISION}),
    "installer": frozenset({P.READ, P.AUDIT, P.PROVISION}),
    "analyst": frozenset({P.READ}),
    "auditor": frozenset({P.READ, P.AUDIT}),
}
assert set(ROLE_PERMISSIONS) == set(ROLES)


@dataclass(frozen=True)
class Principal:
    subject: str  # username or "key:<id>"
    tenant: str
    role: str
    via: str  # "api-key" or "jwt"

    def can(self, permission: Permission) -> bool:
        return permission in ROLE_PERMISSIONS.get(self.role, frozenset())


# --- secrets ---------------------------------------------------------------------------------------

def hash_password(password: str) -> str:
    return _hasher.hash(password)


def password_matches(stored_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def new_api_key() -> tuple[str, str, str]:
    """(key id, the full key to show once, the hash to store)."""
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return key_id, f"{KEY_PREFIX}{key_id}_{secret}", _sha256(secret)


def split_api_key(key: str) -> tuple[str, str] | None:
    if not key.startswith(KEY_PREFIX):
        return None
    key_id, sep, secret = key[len(KEY_PREFIX):].partition("_")
    if not sep or len(key_id) != 12 or not secret or len(key) > 200:
        return None
    return key_id, secret


async def create_api_key(store: Store, tenant: str, role: str, name: str) -> tuple[str, str]:
    """Make a key for ``tenant`` with ``role``; returns (key id, full key). Only the hash is stored."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    key_id, key, digest = new_api_key()
    await store.access.add_api_key(key_id, tenant, role, name, digest, int(time.time() * 1000))
    return key_id, key


class Busy(Exception):
    """Too many password checks are waiting: answer 503 with Retry-After."""


class PasswordWorkers:
    """argon2 off the event loop: ``workers`` threads of its own, at most ``max_waiting`` calls queued.

    A hash takes tens of milliseconds of CPU and 64 MiB; unbounded, 200 parallel logins would queue
    200 of them ahead of a real one (and run them all). Here at most ``workers`` run and ``max_waiting``
    wait; more get ``Busy`` at once. The login throttle keeps any one user or address from filling it.
    """

    def __init__(self, workers: int = 2, max_waiting: int = 32) -> None:
        self.workers, self.max_waiting = workers, max_waiting
        self._pool: ThreadPoolExecutor | None = None
        self._slots: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.waiting = 0
        self.calls = 0  # password checks and hashes run: what tests and bench/login.py count

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self.waiting >= self.max_waiting:
            raise Busy
        loop = asyncio.get_running_loop()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="password")
        if self._slots is None or self._loop is not loop:  # a semaphore belongs to one event loop
            self._slots, self._loop = asyncio.Semaphore(self.workers), loop
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        try:
            self.calls += 1
            return await loop.run_in_executor(self._pool, fn, *args)
        finally:
            self._slots.release()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


_default_workers = PasswordWorkers()


async def create_user(store: Store, username: str, tenant: str, role: str, password: str,
                      workers: PasswordWorkers | None = None) -> bool:
    """Add a user; False if the tenant already has that username. The password is hashed off the event loop."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    digest = await (workers or _default_workers).run(hash_password, password)
    return await store.access.add_user(username, tenant, role, digest, int(time.time() * 1000))


def issue_token(settings: CloudSettings, username: str, tenant: str, role: str) -> str:
    now = int(time.time())
    claims = {"sub": username, "tenant": tenant, "role": role, "iat": now, "exp": now + settings.jwt_ttl_s}
    return jwt.encode(claims, settings.jwt_key, algorithm=JWT_ALG)


def split_login(username: str, tenant: str | None = None) -> tuple[str, str | None]:
    """``ada@acme`` → (ada, acme); a bare ``ada`` → (ada, ``tenant``)."""
    name, at, in_tenant = username.rpartition("@")
    if not at:
        return username, tenant
    if tenant is not None and tenant != in_tenant:
        raise ValueError(f"the username names tenant {in_tenant!r} and the tenant field {tenant!r}")
    return name, in_tenant


async def login(store: Store, settings: CloudSettings, username: str, password: str, *,
                tenant: str | None = None, workers: PasswordWorkers | None = None) -> str | None:
    """A login token, or None for a wrong username or password (the caller does not learn which).

    ``username`` may name its tenant (``ada@acme``); a bare name works while one tenant has it.
    """
    name, tenant = split_login(username, tenant)
    user = await store.access.get_user(name, tenant)
    ok = await (workers or _default_workers).run(password_matches, user["password_hash"] if user else _DUMMY_HASH,
                                                 password)
    if not ok or user is None:
        return None
    return issue_token(settings, name, user["tenant"], user["role"])


# --- the FastAPI side ------------------------------------------------------------------------------

def unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


bearer_scheme = HTTPBearer(auto_error=False, description="an API key (clk_...) or a login token")
key_scheme = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key (clk_...)")


class Authenticator:
    def __init__(self, store: Store, settings: CloudSettings, *, throttle: LoginThrottle | None = None,
                 workers: PasswordWorkers | None = None) -> None:
        self.store, self.settings = store, settings
        self.throttle = throttle or LoginThrottle()
        self.workers = workers or PasswordWorkers()

    async def from_api_key(self, key: str) -> Principal:
        parts = split_api_key(key)
        row = await self.store.access.get_api_key(parts[0]) if parts else None
        if parts is None or row is None or not hmac.compare_digest(row["secret_hash"], _sha256(parts[1])):
            raise unauthorized("unknown API key")
        if row["revoked_ms"] is not None:
            raise unauthorized("this API key was revoked; ask an admin for a new one")
        return Principal(f"key:{row['id']}", row["tenant"], row["role"], "api-key")

    async def from_token(self, token: str) -> Principal:
        try:
            claims: dict[str, Any] = jwt.decode(token, self.settings.jwt_key, algorithms=[JWT_ALG],
                                                options={"require": ["exp", "iat", "sub"]})
        except jwt.ExpiredSignatureError:
            raise unauthorized("login token expired; log in again") from None
        except jwt.InvalidTokenError:
            raise unauthorized("invalid login token") from None
        # A deleted user, or one whose role changed, loses the old token's rights at once.
        tenant = claims.get("tenant")
        user = await self.store.access.get_user(str(claims["sub"]), tenant) if isinstance(tenant, str) else None
        if user is None or user["tenant"] != tenant or user["role"] != claims.get("role"):
            raise unauthorized("login token no longer valid; log in again")
        return Principal(user["username"], user["tenant"], user["role"], "jwt")

    async def authenticate(self, bearer: str | None, api_key: str | None) -> Principal:
        if api_key:
            return await self.from_api_key(api_key)
        if not bearer:
            raise unauthorized("authentication required: Authorization: Bearer <API key or login token>,"
                               " or X-API-Key: <API key>")
        return await (self.from_api_key(bearer) if bearer.startswith(KEY_PREFIX) else self.from_token(bearer))


async def current_principal(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    api_key: Annotated[str | None, Depends(key_scheme)],
) -> Principal:
    cached: Principal | None = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    auth: Authenticator = request.app.state.auth
    principal = await auth.authenticate(bearer.credentials if bearer else None, api_key)
    request.state.principal = principal
    return principal


def allow(permission: Permission) -> Any:
    """A dependency: the caller, if its role has ``permission``; 401 without credentials, 403 without the right."""
    async def check(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
        if not principal.can(permission):
            may = ", ".join(r for r, p in ROLE_PERMISSIONS.items() if permission in p)
            raise HTTPException(403, f"role {principal.role!r} may not {permission.value} (roles that may: {may})")
        return principal

    check.__name__ = f"allow_{permission.value}"
    return check


Reader = Annotated[Principal, Depends(allow(Permission.READ))]
Auditor = Annotated[Principal, Depends(allow(Permission.AUDIT))]
Controller = Annotated[Principal, Depends(allow(Permission.CONTROL))]
Provisioner = Annotated[Principal, Depends(allow(Permission.PROVISION))]
Manager = Annotated[Principal, Depends(allow(Permission.MANAGE))]


def not_found(kind: str, ident: str) -> HTTPException:
    """The answer for anything outside the caller's tenant too: existence is not revealed."""
    return HTTPException(404, f"{kind} {ident!r} not found")


def same_tenant(principal: Principal, tenant: str) -> None:
    if tenant != principal.tenant:
        raise not_found("tenant", tenant)


async def tenant_gateway(store: Store, principal: Principal, gateway_id: str) -> dict[str, Any]:
    """The gateway's record as the API shows it, if it belongs to the caller's tenant; else 404."""
    rec = await store.registry.get_gateway(gateway_id)
    if rec is None or rec.tenant != principal.tenant:
        raise not_found("gateway", gateway_id)
    return {"id": rec.id, "tenant": rec.tenant, "site": rec.site, "alg": rec.alg, "revoked": rec.revoked}


async def has_credentials(store: Store) -> bool:
    """Whether any tenant has a user or an API key (else the operator must make the first admin)."""
    return await store.access.has_credentials()


def first_admin_hint(db: str) -> str:
    return ("no API users or keys yet: make the first admin with\n"
            f"  carbonlink cloud user add --tenant TENANT --username NAME --role admin --db '{db}'\n"
            f"  (or an API key: carbonlink cloud key create --tenant TENANT --role admin --db '{db}')")
