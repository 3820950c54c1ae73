# Runs under MicroPython: the node's main loop for N wakes, then its buffer figures as JSON.
import sys
import json
import micropython

import config
import node

node.main(sys.argv[1], int(sys.argv[2]))
n = node.Node(config.load(sys.argv[1]))
st = n.buf.stats()
st["mem_peak"] = micropython.mem_peak()
print("stats", json.dumps(st))
