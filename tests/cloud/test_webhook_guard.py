"""The cloud's webhooks never reach its own network: judged after DNS, on the address actually connected to."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterator

import pytest

from carbonlink.cloud.webhook_guard import TargetPolicy, guarded_client, parse_networks
from carbonlink.rules.actions import DeadLetter, Job, MappingSecrets, WebhookExecutor
from carbonlink.rules.document import WebhookAction
from tests.rules.test_actions import SECRET, Receiver, Sleeps


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.mark.parametrize(("address", "why"), [
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
    ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("192.168.1.1", "private"), ("100.64.0.1", "private"),
    ("fd00::1", "private"), ("::ffff:127.0.0.1", "loopback"), ("::ffff:10.0.0.1", "private"),
    ("0.0.0.0", "unspecified"), ("224.0.0.1", "multicast"), ("192.0.2.1", "reserved"), ("240.0.0.1", "reserved"),
])
def test_addresses_that_are_not_global_are_refused(address: str, why: str) -> None:
    reason = TargetPolicy().refusal(ipaddress.ip_address(address))
    assert reason is not None and why in reason


def test_public_addresses_pass_and_the_allow_list_and_private_switch_work() -> None:
    p = TargetPolicy()
    for ok in ("8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"):
        assert p.refusal(ipaddress.ip_address(ok)) is None
    private = TargetPolicy(allow_private=True)
    assert private.refusal(ipaddress.ip_address("10.1.2.3")) is None
    assert private.refusal(ipaddress.ip_address("127.0.0.1")) == "a loopback address"  # still refused
    assert private.refusal(ipaddress.ip_address("169.254.169.254")) == "a link-local address"
    allow = TargetPolicy(allow=parse_networks(["10.20.0.0/24", "127.0.0.1"]))
    assert allow.refusal(ipaddress.ip_address("10.20.0.9")) is None
    assert allow.refusal(ipaddress.ip_address("127.0.0.1")) is None
    assert allow.refusal(ipaddress.ip_address("10.20.1.9")) == "a private address"
    with pytest.raises(ValueError, match="'nope' is not an IP address"):
        parse_networks(["nope"])
    assert p.check_host("localhost") and p.check_host("[::1]") and p.check_host("169.254.169.254")
    assert p.check_host("ops.example") is None and p.check_host("8.8.8.8") is None


async def _call(url: str, policy: TargetPolicy) -> tuple[list[DeadLetter], int]:
    dead: list[DeadLetter] = []
    action = WebhookAction(type="webhook", url=url, secret="ops", max_attempts=3)
    job = Job("so2-high", "gw-1/c1/so2", "raised", action, {"kind": "alert.raised", "ts": 1})
    async with WebhookExecutor(secrets=MappingSecrets({"ops": SECRET}), on_dead_letter=dead.append,
                               client=guarded_client(policy), sleep=Sleeps()) as ex:
        ex.submit(job)
        await asyncio.wait_for(ex.drain(), 10)
        return dead, ex.sent


async def test_a_webhook_to_loopback_is_dead_lettered_at_once_and_never_called(receiver: Receiver) -> None:
    port = receiver.server.server_address[1]
    for host in ("127.0.0.1", "localhost"):  # a literal, and a name that resolves to loopback
        dead, sent = await _call(f"http://{host}:{port}/hook", TargetPolicy())
        assert sent == 0 and len(dead) == 1 and dead[0].attempts == 1, dead
        assert "is a loopback address" in dead[0].reason and f"host {host} is not called" in dead[0].reason
    assert receiver.calls == []


async def test_an_allowed_network_is_called_and_signed(receiver: Receiver) -> None:
    port = receiver.server.server_address[1]
    dead, sent = await _call(f"http://localhost:{port}/hook", TargetPolicy(allow=parse_networks(["127.0.0.0/8"])))
    assert dead == [] and sent == 1
    assert len(receiver.calls) == 1 and receiver.calls[0]["signed"]
