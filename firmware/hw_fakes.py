# Fake peripherals for the unix port, driven by the JSON file named in $CL_SIM. They speak the real
# protocols, so the firmware above them runs exactly as on a board. One small module per kind
# (fake_uart, fake_i2c, fake_ble), loaded only while that sensor is read.
import json
import os

_sim = None


def sim():
    global _sim
    if _sim is None:
        path = os.getenv("CL_SIM")
        _sim = {}
        if path:
            with open(path) as f:
                _sim = json.load(f)
    return _sim
