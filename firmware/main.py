# Board entry point (runs after boot.py). The node loop must survive anything: log, wait, reset clean.
import sys
import time

try:
    import node
    node.main()
except Exception as e:  # the last line of defence on a device nobody can reach: log, wait, reset
    sys.print_exception(e)
    time.sleep(30 if not isinstance(e, ValueError) else 3600)  # a bad config.json waits for a fix
    import machine
    machine.reset()
