"""Independent check: bthome-ble (Home Assistant's BTHome parser) decodes the forest simulator's adverts as we do."""

from __future__ import annotations

import time

import pytest
from bleak.backends.device import BLEDevice
from bthome_ble import BTHomeBluetoothDeviceData
from habluetooth.models import BluetoothServiceInfoBleak

from carbonlink.codecs.bthome import UUID128, decode
from carbonlink.simulators.forest import Forest

# bthome-ble's entity keys for the objects we decode; its "count" is our micrometre dendrometer (0x5B).
THEIRS = {"battery": "battery", "temperature": "temperature", "humidity": "humidity", "voltage": "voltage",
          "moisture": "moisture", "count": "count", "distance": "distance"}


def their_values(mac: str, data: bytes, key: bytes | None) -> tuple[dict[str, float], BTHomeBluetoothDeviceData]:
    info = BluetoothServiceInfoBleak(
        name="tree", address=mac, rssi=-70, manufacturer_data={}, service_data={UUID128: data},
        service_uuids=[UUID128], source="local", device=BLEDevice(mac, None, None), advertisement=None,
        connectable=False, time=time.monotonic(), tx_power=None)
    parser = BTHomeBluetoothDeviceData(bindkey=key)
    update = parser.update(info)
    return {k.key: float(v.native_value) for k, v in update.entity_values.items()  # type: ignore[arg-type]
            if k.key not in ("packet_id", "signal_strength")}, parser


@pytest.mark.parametrize("encrypted", [False, True])
@pytest.mark.parametrize("dendrometer", ["count_um", "distance_mm"])
def test_bthome_ble_reads_the_simulator_as_we_do(encrypted: bool, dendrometer: str) -> None:
    forest = Forest.plot(5, encrypted=encrypted, dendrometer=dendrometer, speed=3600.0)  # type: ignore[arg-type]
    checked = 0
    for _ in range(6):
        for raw in forest.tick():
            key = forest.tree(raw.mac).key
            ours = decode(raw.data, raw.mac, key)
            theirs, parser = their_values(raw.mac, raw.data, key)
            assert {THEIRS[m.name]: m.value for m in ours.measurements} == pytest.approx(theirs, abs=1e-9)
            assert len(theirs) == 6
            if encrypted:
                assert parser.bindkey_verified and not parser.decryption_failed
            checked += 1
    assert checked == 30


def test_bthome_ble_reads_mac_included_adverts() -> None:
    forest = Forest.plot(2, encrypted=True)
    for tr in forest.trees:
        tr.include_mac = True
    for raw in forest.tick():
        key = forest.tree(raw.mac).key
        theirs, parser = their_values("11:22:33:44:55:66", raw.data, key)  # radio address differs from the MAC inside
        ours = decode(raw.data, "11:22:33:44:55:66", key)
        assert parser.bindkey_verified and ours.mac == raw.mac
        assert {THEIRS[m.name]: m.value for m in ours.measurements} == pytest.approx(theirs, abs=1e-9)


def test_bthome_ble_also_refuses_a_wrong_key() -> None:
    forest = Forest.plot(1, encrypted=True)
    raw = forest.tick()[0]
    theirs, parser = their_values(raw.mac, raw.data, bytes(16))
    assert theirs == {} and not parser.bindkey_verified
