# Runs under MicroPython: N wakes' worth of signed batches straight into the flash buffer (no radio).
import sys

import node

n = node.Node(node.load_config(sys.argv[1]))
for _ in range(int(sys.argv[2])):
    n.sample()
st = n.buf.stats()
print("filled", st["pending"], st["bytes"], st["dropped"])
