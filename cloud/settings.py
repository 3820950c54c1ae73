"""The cloud's settings: one pydantic-settings object, read from CARBONLINK_* environment variables.

It refuses a well-known or short JWT secret or metrics token in every environment, and a missing JWT
secret outside development; in development a missing JWT secret is replaced by a random one per
process (login tokens then end with the process). Node secrets are sealed with a key ring from
CARBONLINK_SECRET_KEY or a key file (cloud/secretbox.py).
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from .secretbox import SecretBox

log = logging.getLogger(__name__)

WEAK_SECRETS = {"changethis", "changeme", "secret", "password", "admin", "test", "dev", "carbonlink"}
MIN_SECRET_CHARS = 32


class CloudSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CARBONLINK_", extra="ignore")

    environment: Literal["development", "production"] = Field(
        default="development", description="production refuses missing or default secrets")
    jwt_secret: SecretStr | None = Field(
        default=None, description="HS256 key for login tokens; e.g. `openssl rand -hex 32`")
    jwt_ttl_s: int = Field(default=900, ge=60, le=24 * 3600, description="lifetime of a login token")
    metrics_token: SecretStr | None = Field(
        default=None, description="bearer token Prometheus scrapes /metrics with; unset: /metrics is off")
    max_body_bytes: int = Field(default=1 << 20, ge=1024, le=64 << 20, description="larger request bodies get 413")
    log_format: Literal["json", "text"] = "json"
    # Rules in the cloud (docs/rules.md, "In the cloud").
    rules_cloud: bool = Field(default=True, description="evaluate tenants' cloud rules over committed readings")
    rules_lateness_s: int = Field(default=600, ge=0, le=86_400,
                                  description="how late a reading may arrive and still be evaluated in order")
    secret_key: SecretStr | None = Field(
        default=None, description="key ring sealing HMAC node secrets at rest: 64 hex digits (`openssl rand -hex"
        " 32`); several comma-separated to rotate, the first seals; overrides secret_key_file")
    secret_key_file: Path = Field(
        default=Path("var/cloud/secret.key"), description="file holding the key ring (mode 0600, one key a"
        " line); in development it is generated when missing; keep it out of database backups")
    rules_secrets_dir: Path = Field(default=Path("var/cloud/secrets"),
                                    description="webhook secrets of tenants: {dir}/{tenant}/{name}, files 0600")
    webhook_allow: list[str] = Field(default_factory=list, description="networks webhooks may call although they"
                                     ' are not public, e.g. ["10.20.0.0/24"] (JSON list in the environment)')
    webhook_allow_private: bool = Field(default=False, description="let webhooks call private addresses"
                                        " (RFC 1918, RFC 6598, ULA); loopback and link-local stay refused")
    smtp_host: str | None = Field(default=None, description="SMTP relay for rules' e-mail; unset: no e-mail")
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_sender: str = "carbonlink@localhost"
    smtp_starttls: bool = False

    @field_validator("webhook_allow")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        from .webhook_guard import parse_networks

        try:
            parse_networks(v)
        except ValueError as exc:
            raise ValueError(f"CARBONLINK_WEBHOOK_ALLOW: {exc}") from None
        return v

    @model_validator(mode="after")
    def _refuse_default_secrets(self) -> CloudSettings:
        for name in ("jwt_secret", "metrics_token"):
            value: SecretStr | None = getattr(self, name)
            if value is None:
                continue
            text = value.get_secret_value()
            if text.lower() in WEAK_SECRETS or len(text) < MIN_SECRET_CHARS:
                # In every environment: a guessable JWT key lets anyone mint an admin's token. Only the key
                # development generates for itself (below) is exempt, and it is long and random.
                raise ValueError(f"CARBONLINK_{name.upper()} is a default or short secret; use at least"
                                 f" {MIN_SECRET_CHARS} random characters, e.g. `openssl rand -hex 32`, or unset it"
                                 " in development to get a random one per process")
        if self.jwt_secret is None:
            if self.environment != "development":
                raise ValueError("set CARBONLINK_JWT_SECRET (e.g. `openssl rand -hex 32`): login tokens are"
                                 " signed with it, and every API process must share it")
            self.jwt_secret = SecretStr(secrets.token_hex(32))
        return self

    def secret_box(self, *, create: bool = True) -> SecretBox | None:
        """The key ring for node secrets: from CARBONLINK_SECRET_KEY, else the key file (generated in
        development when missing, unless ``create`` is off); None when there is none."""
        from .secretbox import SecretBox, create_key_file, parse_ring, read_key_file

        if self.secret_key is not None:
            return SecretBox(parse_ring(self.secret_key.get_secret_value(), "CARBONLINK_SECRET_KEY"))
        path = self.secret_key_file
        if path.exists():
            return SecretBox(read_key_file(path))
        if create and self.environment == "development":
            box = SecretBox(create_key_file(path))
            log.info("generated the secret key ring %s (development); node secrets are sealed with it", path)
            return box
        return None

    @property
    def jwt_key(self) -> str:
        assert self.jwt_secret is not None  # the validator fills it
        return self.jwt_secret.get_secret_value()
