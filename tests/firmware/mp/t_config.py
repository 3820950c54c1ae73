# Runs under MicroPython: config.json validation refuses bad files with a message naming the key.
import json
import sys

import config
from mpcheck import done, fail

with open(sys.argv[1]) as f:
    good = f.read()
config.validate(json.loads(good))
print("ok good config")
cases = [
    ("node_id", {"node_id": "a/b"}), ("site", {"site": ""}), ("secret_hex", {"secret_hex": "abc"}),
    ("mqtt", {"mqtt": None}), ("mqtt.port", {"mqtt": {"host": "h", "port": 0}}),
    ("sample_interval_s", {"sample_interval_s": 1}), ("watchdog_s", {"watchdog_s": 10, "ack_timeout_s": 10}),
    ("sensors", {"sensors": []}), ("kind", {"sensors": [{"id": "x", "kind": "laser", "device": "d"}]}),
    ("points", {"sensors": [{"id": "x", "kind": "modbus", "device": "d", "points": []}]}),
    ("type", {"sensors": [{"id": "x", "kind": "modbus", "device": "d", "points": [{"point": "p", "reg": 1,
                                                                                   "type": "f64"}]}]}),
    ("dry and wet", {"sensors": [{"id": "x", "kind": "soil_adc", "device": "d", "pin": 1, "dry": 5, "wet": 5}]}),
    ("MAC", {"sensors": [{"id": "x", "kind": "bthome", "devices": {"nope": "d"}}]}),
    ("unique", {"sensors": [{"id": "x", "kind": "soil_i2c", "device": "d"}, {"id": "x", "kind": "soil_i2c",
                                                                              "device": "e"}]}),
]
for want, over in cases:
    c = json.loads(good)
    c.update(over)
    try:
        config.validate(c)
        fail("accepted", want)
    except config.ConfigError as e:
        if want in str(e):
            print("ok", want, "->", e)
        else:
            fail(want, "not in", e)
try:
    config.load("/nonexistent/config.json")
    fail("missing file loaded")
except config.ConfigError as e:
    print("ok missing file ->", e)
done()
