"""Broker URLs keep credentials and TLS settings, never show a password, and name the setting that is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from carbonlink.kernel.mqtturl import MqttConfigError, MqttUrl
from tests.tlsfiles import make_ca


def test_plain_url_keeps_host_port_and_defaults() -> None:
    u = MqttUrl.parse("mqtt://broker.example")
    assert (u.host, u.port, u.tls, u.username, u.password) == ("broker.example", 1883, False, None, None)
    assert MqttUrl.parse("mqtts://broker.example").port == 8883
    assert u.tls_context() is None
    v6 = MqttUrl.parse("mqtt://[::1]:1884")
    assert (v6.host, str(v6)) == ("::1", "mqtt://[::1]:1884")


def test_credentials_in_the_url_are_kept_decoded_and_never_shown() -> None:
    u = MqttUrl.parse("mqtt://carbonlink-ingest:p%40ss%3Aw0rd@10.0.0.5:1884")
    assert (u.username, u.password, u.port) == ("carbonlink-ingest", "p@ss:w0rd", 1884)
    assert "p@ss" not in str(u) and "p%40ss" not in str(u) and "w0rd" not in repr(u)
    assert str(u) == "mqtt://carbonlink-ingest@10.0.0.5:1884"
    kw = u.client_kwargs()
    assert (kw["username"], kw["password"], kw["tls_context"]) == ("carbonlink-ingest", "p@ss:w0rd", None)


@pytest.mark.parametrize(("url", "says"), [
    ("http://host", "must look like"),
    ("mqtt://", "must look like"),
    ("mqtt://host/path", "path"),
    ("mqtt://host:99999", "mqtt://host:1883"),
    ("mqtt://host?cafile=/x", "use mqtts://"),
    ("mqtts://host?ca=/x", "'ca' is unknown"),
    ("mqtts://host?cafile=", "empty"),
    ("mqtts://host?cafile=/a&cafile=/b", "twice"),
    ("mqtts://host?certfile=/c", "both certfile and keyfile"),
    ("mqtt://:secret@host", "no user name"),
])
def test_bad_urls_name_the_problem_and_never_echo_the_password(url: str, says: str) -> None:
    with pytest.raises(MqttConfigError) as e:
        MqttUrl.parse(url)
    assert says in str(e.value)
    assert "secret" not in str(e.value)


def test_password_from_environment_or_file(tmp_path: Path) -> None:
    env = {"CARBONLINK_MQTT_USERNAME": "carbonlink-ingest", "CARBONLINK_MQTT_PASSWORD": "from-env"}
    u = MqttUrl.from_env("mqtt://host", env)
    assert (u.username, u.password) == ("carbonlink-ingest", "from-env")
    pw = tmp_path / "mqtt.password"
    pw.write_text("from-file\n")
    u = MqttUrl.from_env("mqtt://carbonlink-ingest@host", {"CARBONLINK_MQTT_PASSWORD_FILE": str(pw)})
    assert (u.username, u.password) == ("carbonlink-ingest", "from-file")
    assert MqttUrl.from_env("mqtt://host", {}).password is None


@pytest.mark.parametrize(("url", "env", "says"), [
    ("mqtt://u:p@host", {"CARBONLINK_MQTT_PASSWORD": "q"}, "give it in one place"),
    ("mqtt://host", {"CARBONLINK_MQTT_PASSWORD": "q", "CARBONLINK_MQTT_PASSWORD_FILE": "/x"}, "one place"),
    ("mqtt://host", {"CARBONLINK_MQTT_PASSWORD": "q"}, "CARBONLINK_MQTT_USERNAME"),
    ("mqtt://a@host", {"CARBONLINK_MQTT_USERNAME": "b"}, "user name in one place"),
    ("mqtt://u@host", {"CARBONLINK_MQTT_PASSWORD_FILE": "/nonexistent/pw"}, "CARBONLINK_MQTT_PASSWORD_FILE="),
])
def test_conflicting_or_missing_settings_are_refused(url: str, env: dict[str, str], says: str) -> None:
    with pytest.raises(MqttConfigError) as e:
        MqttUrl.from_env(url, env)
    assert says in str(e.value)


def test_password_file_must_hold_one_line(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    for text in ("", "\n", "two\nlines\n"):
        pw.write_text(text)
        with pytest.raises(MqttConfigError, match="alone, on one line"):
            MqttUrl.from_env("mqtt://u@host", {"CARBONLINK_MQTT_PASSWORD_FILE": str(pw)})


def test_tls_with_a_private_ca_and_client_certificate(tmp_path: Path) -> None:
    files = make_ca(tmp_path / "pki", clients=("carbonlink-ingest",))
    cert, key = tmp_path / "pki" / "carbonlink-ingest.crt", tmp_path / "pki" / "carbonlink-ingest.key"
    u = MqttUrl.from_env(f"mqtts://localhost?cafile={files.ca}&certfile={cert}&keyfile={key}", {})
    ctx = u.tls_context()
    assert ctx is not None and ctx.check_hostname
    assert (u.cafile, u.certfile, u.keyfile) == (files.ca, cert, key)
    assert str(u) == f"mqtts://localhost:8883?cafile={files.ca}&certfile={cert}&keyfile={key}"


def test_tls_files_are_checked_at_start(tmp_path: Path) -> None:
    with pytest.raises(MqttConfigError, match=r"cafile=.*no such file"):
        MqttUrl.from_env(f"mqtts://host?cafile={tmp_path / 'missing.crt'}", {})
    junk = tmp_path / "junk.crt"
    junk.write_text("not a certificate")
    with pytest.raises(MqttConfigError, match=r"cafile=.*not a PEM CA certificate"):
        MqttUrl.from_env(f"mqtts://host?cafile={junk}", {})
    files = make_ca(tmp_path / "pki")
    with pytest.raises(MqttConfigError, match="cannot load the client certificate"):
        MqttUrl.from_env(f"mqtts://host?cafile={files.ca}&certfile={files.ca}&keyfile={junk}", {})
