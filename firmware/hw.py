# The hardware layer: the application calls only these functions, so it runs unchanged on an ESP32
# and on the MicroPython unix port, where hw_unix puts fakes in place of the peripherals.
import sys

if sys.platform == "esp32":
    from hw_esp32 import *  # noqa: F403
else:
    from hw_unix import *  # noqa: F403
