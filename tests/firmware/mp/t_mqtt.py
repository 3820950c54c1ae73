# Runs under MicroPython: the firmware's MQTT client against a real broker.
import sys
import time

from mqtt import MQTTClient

mode, host, port, prefix = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
got = []


def cb(topic, msg):
    got.append((topic, msg))
    print("got", topic, msg.decode())


if mode == "basic":
    c = MQTTClient(prefix.replace("/", "."), host, port, keepalive=1, cb=cb, clean=True)
    print("session", c.connect())
    c.subscribe(prefix + "/in", 1)
    print("subscribed")
    c.publish(prefix + "/out", b"small", qos=1)
    c.publish(prefix + "/out", b"x" * 3000, qos=1)
    c.publish(prefix + "/out", b"qos0", qos=0)
    print("published")
    t0 = time.ticks_ms()
    while len(got) < 2 and time.ticks_diff(time.ticks_ms(), t0) < 10000:
        c.check_msg(0.5)
    # Idle well past 1.5 x keep-alive: only our PINGREQs keep the broker from dropping us.
    t0 = time.ticks_ms()
    while time.ticks_diff(time.ticks_ms(), t0) < 3500:
        c.check_msg(0.2)
    c.publish(prefix + "/out", b"after-idle", qos=1)
    c.ping()
    print("alive")
    c.disconnect()
    print("done 0")

elif mode == "will":
    c = MQTTClient(prefix.replace("/", "."), host, port, keepalive=30, clean=True,
                   will=(prefix + "/status", b"offline", True, 1))
    c.connect()
    c.publish(prefix + "/status", b"online", retain=True, qos=1)
    print("ready")
    while True:
        c.check_msg(1)

elif mode == "refused":
    try:
        MQTTClient("x", host, port, timeout=2).connect()
        print("FAIL connected")
    except OSError as e:
        print("ok refused", type(e).__name__)
    print("done 0")
