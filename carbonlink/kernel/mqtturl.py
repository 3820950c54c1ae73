"""Broker URLs, parsed the same way everywhere: host, port, credentials and TLS.

Scheme (docs/production.md, "Broker URL"):

    mqtt://[USER[:PASSWORD]@]HOST[:PORT]                         plain TCP, port 1883
    mqtts://[USER[:PASSWORD]@]HOST[:PORT][?cafile=…&certfile=…&keyfile=…]   TLS, port 8883

The query parameters take Mosquitto's own names: ``cafile`` (the CA that signed the broker's certificate;
without it the system's trust store is used), ``certfile`` and ``keyfile`` (a client certificate, for a
listener with ``require_certificate true``; both or neither). A password in the URL works but ends up in
process listings and shell history: prefer ``from_env``, which also reads ``CARBONLINK_MQTT_USERNAME``,
``CARBONLINK_MQTT_PASSWORD`` or ``CARBONLINK_MQTT_PASSWORD_FILE`` (a file holding only the password, e.g. a
Docker secret). ``str(url)`` never shows the password, and neither does ``repr``.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

ENV_USERNAME = "CARBONLINK_MQTT_USERNAME"
ENV_PASSWORD = "CARBONLINK_MQTT_PASSWORD"
ENV_PASSWORD_FILE = "CARBONLINK_MQTT_PASSWORD_FILE"
TLS_PARAMS = ("cafile", "certfile", "keyfile")
MAX_PASSWORD_FILE = 4096


class MqttConfigError(ValueError):
    """A broker setting that cannot work; the message names the setting and the fix."""


@dataclass(frozen=True)
class MqttUrl:
    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    cafile: Path | None = None
    certfile: Path | None = None
    keyfile: Path | None = None

    @classmethod
    def parse(cls, url: str) -> MqttUrl:
        """The URL alone (no environment); MqttConfigError names what is wrong."""
        shown = _redact(url)
        try:
            u = urlsplit(url)
            port = u.port
        except ValueError as exc:
            raise MqttConfigError(f"broker URL {shown!r}: {exc}; it must look like mqtt://host:1883") from None
        if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
            raise MqttConfigError(f"broker URL {shown!r} must look like mqtt://host:port or mqtts://host:port")
        if u.path not in ("", "/") or u.fragment:
            raise MqttConfigError(f"broker URL {shown!r} has a path or fragment; a broker URL has neither")
        tls = u.scheme == "mqtts"
        files: dict[str, Path] = {}
        try:
            query = parse_qsl(u.query, keep_blank_values=True, strict_parsing=bool(u.query))
        except ValueError:
            raise MqttConfigError(f"broker URL {shown!r}: query must be name=value pairs joined by &") from None
        for name, value in query:
            if name not in TLS_PARAMS:
                raise MqttConfigError(f"broker URL parameter {name!r} is unknown; known: {', '.join(TLS_PARAMS)}")
            if name in files:
                raise MqttConfigError(f"broker URL parameter {name!r} is given twice; give it once")
            if not value:
                raise MqttConfigError(f"broker URL parameter {name!r} is empty; give a file path")
            files[name] = Path(value)
        if files and not tls:
            raise MqttConfigError(f"broker URL parameters {', '.join(files)} need TLS: use mqtts:// "
                                  "(and the broker's TLS port, 8883 by default)")
        if ("certfile" in files) != ("keyfile" in files):
            raise MqttConfigError("broker URL: a client certificate needs both certfile and keyfile")
        username = unquote(u.username) if u.username else None
        password = unquote(u.password) if u.password is not None else None
        if password is not None and not username:
            raise MqttConfigError(f"broker URL {shown!r} has a password but no user name")
        return cls(u.hostname, port or (8883 if tls else 1883), tls, username, password,
                   files.get("cafile"), files.get("certfile"), files.get("keyfile"))

    @classmethod
    def from_env(cls, url: str, env: Mapping[str, str] | None = None) -> MqttUrl:
        """The URL completed by CARBONLINK_MQTT_* credentials, its files checked: for a service at start.

        The password comes from exactly one place (URL, CARBONLINK_MQTT_PASSWORD or
        CARBONLINK_MQTT_PASSWORD_FILE); two are refused rather than one silently winning.
        """
        env = os.environ if env is None else env
        parsed = cls.parse(url)
        username = parsed.username
        env_user = env.get(ENV_USERNAME) or None
        if env_user is not None:
            if username is not None and username != env_user:
                raise MqttConfigError(f"the broker URL names user {username!r} but {ENV_USERNAME} says "
                                      f"{env_user!r}; give the user name in one place")
            username = env_user
        sources = [name for name, present in (("the broker URL", parsed.password is not None),
                                              (ENV_PASSWORD, bool(env.get(ENV_PASSWORD))),
                                              (ENV_PASSWORD_FILE, bool(env.get(ENV_PASSWORD_FILE)))) if present]
        if len(sources) > 1:
            raise MqttConfigError(f"the broker password is given by {' and '.join(sources)}; give it in one place "
                                  f"(best {ENV_PASSWORD_FILE})")
        password = parsed.password
        if env.get(ENV_PASSWORD):
            password = env[ENV_PASSWORD]
        elif env.get(ENV_PASSWORD_FILE):
            password = read_password_file(Path(env[ENV_PASSWORD_FILE]), ENV_PASSWORD_FILE)
        if password is not None and not username:
            raise MqttConfigError(f"a broker password is set but no user name: set {ENV_USERNAME} or put "
                                  "the user in the URL (mqtt://USER@host)")
        resolved = cls(parsed.host, parsed.port, parsed.tls, username, password,
                       parsed.cafile, parsed.certfile, parsed.keyfile)
        resolved.tls_context()  # unreadable or malformed certificate files fail now, not at every reconnect
        return resolved

    def tls_context(self) -> ssl.SSLContext | None:
        """A verifying TLS context for mqtts:// (hostname checked), or None for mqtt://."""
        if not self.tls:
            return None
        for name in TLS_PARAMS:
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise MqttConfigError(f"broker URL parameter {name}={path}: no such file; fix the path or "
                                      "mount the file")
        try:
            ctx = ssl.create_default_context(cafile=str(self.cafile) if self.cafile else None)
        except (ssl.SSLError, OSError) as exc:
            raise MqttConfigError(f"broker URL parameter cafile={self.cafile}: not a PEM CA certificate "
                                  f"({exc}); give the CA that signed the broker's certificate") from None
        if self.certfile is not None:
            try:
                ctx.load_cert_chain(str(self.certfile), str(self.keyfile))
            except (ssl.SSLError, OSError) as exc:
                raise MqttConfigError(f"broker URL parameters certfile={self.certfile}, keyfile={self.keyfile}: "
                                      f"cannot load the client certificate ({exc}); give a PEM certificate and "
                                      "its unencrypted key") from None
        return ctx

    def client_kwargs(self) -> dict[str, Any]:
        """Connection arguments for ``aiomqtt.Client`` (host, port, credentials, TLS)."""
        return {"hostname": self.host, "port": self.port, "username": self.username, "password": self.password,
                "tls_context": self.tls_context()}

    def __str__(self) -> str:
        """Safe to print and log: the user name is shown, the password never."""
        user = f"{quote(self.username, safe='')}@" if self.username else ""
        query = "&".join(f"{n}={getattr(self, n)}" for n in TLS_PARAMS if getattr(self, n) is not None)
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 literal
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{host}:{self.port}" + (f"?{query}" if query else "")


def read_password_file(path: Path, key: str) -> str:
    """The password in ``path`` (one line; a trailing newline is dropped); errors name ``key``."""
    try:
        raw = path.read_bytes()[: MAX_PASSWORD_FILE + 1]
    except OSError as exc:
        raise MqttConfigError(f"{key}={path}: cannot read it ({exc.strerror}); fix the path or its "
                              "permissions (the service's user must be able to read it)") from None
    try:
        text = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise MqttConfigError(f"{key}={path}: not UTF-8 text; the file must hold only the password") from None
    if len(raw) > MAX_PASSWORD_FILE or not text or "\n" in text:
        raise MqttConfigError(f"{key}={path}: must hold the password alone, on one line")
    return text


def _redact(url: str) -> str:
    """The URL with any password replaced by ***, for error messages."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, hostpart = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.partition(':')[0]}:***@{hostpart}"
