"""OPC-UA driver settings and the status-code to quality-flag mapping (no server needed)."""

from __future__ import annotations

import pytest
from asyncua import ua
from pydantic import ValidationError

from carbonlink.edge.drivers.opcua import OpcUaDevice, quality_for
from carbonlink.kernel.wire import Quality


def st(code: int) -> ua.StatusCode:
    return ua.StatusCode(ua.UInt32(code))


def test_quality_mapping() -> None:
    S = ua.StatusCodes
    assert quality_for(st(S.Good)) is Quality.NORMAL
    assert quality_for(st(S.GoodLocalOverride)) is Quality.MANUAL
    assert quality_for(st(S.BadSensorFailure)) is Quality.FAULT
    assert quality_for(st(S.BadDeviceFailure)) is Quality.FAULT
    assert quality_for(st(S.BadOutOfService)) is Quality.STOPPED
    assert quality_for(st(S.BadCommunicationError)) is Quality.COMM_FAILURE
    assert quality_for(st(S.UncertainLastUsableValue)) is Quality.COMM_FAILURE
    assert quality_for(st(S.UncertainSubstituteValue)) is Quality.MANUAL
    assert quality_for(st(S.UncertainInitialValue)) is Quality.FAULT
    assert quality_for(st(S.Uncertain)) is Quality.FAULT
    # info bits (here: the value hit its high limit) do not change the meaning
    assert quality_for(st(S.UncertainEngineeringUnitsExceeded | 0x200)) is Quality.OVER_RANGE


@pytest.mark.parametrize(("patch", "message"), [
    ({"nodes": [{"name": "a", "node_id": "ns=2;x=1"}]}, "not an OPC-UA node id"),
    ({"nodes": [{"name": "a", "browse_path": "Objects/CEMS"}]}, "namespace:Name"),
    ({"nodes": [{"name": "a"}]}, "exactly one of"),
    ({"nodes": [{"name": "a", "node_id": "ns=2;i=1", "browse_path": "0:Objects"}]}, "exactly one of"),
    ({"nodes": [{"name": "a", "node_id": "ns=2;i=1"}, {"name": "a", "node_id": "ns=2;i=2"}]}, "unique"),
    ({"username": "operator"}, "both 'username' and 'password'"),
    ({"certificate": "/tmp/c.der"}, "both 'certificate' and 'private_key'"),
    ({"endpoint": "http://127.0.0.1:4840"}, "pattern"),
    ({"mode": "push"}, "subscribe"),
    ({"colour": "red"}, "Extra inputs"),
])
def test_settings_refuse_bad_config(patch: dict[str, object], message: str) -> None:
    base = {"id": "x", "driver": "opcua", "endpoint": "opc.tcp://127.0.0.1:4840",
            "nodes": [{"name": "so2", "node_id": "ns=2;i=10"}]}
    with pytest.raises(ValidationError, match=message):
        OpcUaDevice.model_validate({**base, **patch})


def test_password_never_shows_in_settings_repr() -> None:
    s = OpcUaDevice.model_validate({"id": "x", "driver": "opcua", "endpoint": "opc.tcp://h:4840",
                                    "username": "op", "password": "s3cret",
                                    "nodes": [{"name": "so2", "node_id": "ns=2;i=10"}]})
    assert "s3cret" not in repr(s) and s.publishing_s == s.poll_interval_s
