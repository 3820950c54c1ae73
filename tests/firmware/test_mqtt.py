"""The firmware's own MQTT 3.1.1 client, under MicroPython, against the machine's real Mosquitto."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import uuid

import aiomqtt

from tests.services import free_port, require_mosquitto_service

from .conftest import assert_all_ok, mp_env, script_argv


def _prefix() -> str:
    return f"cltest/fw-{uuid.uuid4().hex[:10]}"


async def _run_mp(*args: str) -> asyncio.subprocess.Process:
    argv = script_argv("t_mqtt.py", *args)
    return await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, env=mp_env())


async def _line(proc: asyncio.subprocess.Process, prefix: str, wait_s: float = 10) -> str:
    assert proc.stdout is not None
    async with asyncio.timeout(wait_s):
        while True:
            line = (await proc.stdout.readline()).decode()
            if not line:
                raise AssertionError(f"micropython ended before {prefix!r}")
            if line.startswith(prefix):
                return line.strip()


async def test_qos1_subscribe_keepalive_against_mosquitto() -> None:
    require_mosquitto_service()
    prefix = _prefix()
    async with aiomqtt.Client("127.0.0.1", 1883, identifier=f"obs-{prefix[-10:]}") as obs:
        await obs.subscribe(prefix + "/out", qos=1)
        proc = await _run_mp("basic", "127.0.0.1", "1883", prefix)
        await _line(proc, "subscribed")
        await obs.publish(prefix + "/in", b"hello-1", qos=1)
        await obs.publish(prefix + "/in", b"hello-0", qos=0)
        received: list[bytes] = []
        async with asyncio.timeout(15):
            async for m in obs.messages:
                received.append(bytes(m.payload))  # type: ignore[arg-type]
                if received[-1] == b"after-idle":
                    break
        out, err = await proc.communicate()
        text = out.decode()
        assert proc.returncode == 0, err.decode()
        assert "got " + prefix + "/in hello-1" in text and "got " + prefix + "/in hello-0" in text
        assert "alive" in text and "done 0" in text
        assert received == [b"small", b"x" * 3000, b"qos0", b"after-idle"]


async def test_last_will_is_published_when_the_node_dies() -> None:
    require_mosquitto_service()
    prefix = _prefix()
    proc = await _run_mp("will", "127.0.0.1", "1883", prefix)
    await _line(proc, "ready")
    async with aiomqtt.Client("127.0.0.1", 1883, identifier=f"obs-{prefix[-10:]}") as obs:
        await obs.subscribe(prefix + "/status", qos=1)
        seen = []
        async with asyncio.timeout(10):
            async for m in obs.messages:
                seen.append(bytes(m.payload))  # type: ignore[arg-type]
                if seen == [b"online"]:
                    proc.send_signal(signal.SIGKILL)  # power cut: no DISCONNECT, the broker sends the will
                if seen[-1] == b"offline":
                    break
        assert seen == [b"online", b"offline"]
        await proc.wait()
        await obs.publish(prefix + "/status", b"", retain=True)  # clear the retained message


def test_refused_connection_is_an_oserror() -> None:
    res = subprocess.run(script_argv("t_mqtt.py", "refused", "127.0.0.1", str(free_port()), "x"), capture_output=True,
                         text=True, env=mp_env(), timeout=20)
    from .conftest import MpResult
    assert_all_ok(MpResult(res.returncode, res.stdout, res.stderr))
