# Runs under MicroPython: the node's main loop for N wakes, then its buffer figures as JSON.
import gc
import json
import sys

import node

node.main(sys.argv[1], int(sys.argv[2]))
n = node.Node(node.load_config(sys.argv[1]))
st = n.buf.stats()
gc.collect()
st["heap_free"] = gc.mem_free()
st["heap_used"] = gc.mem_alloc()
print("stats", json.dumps(st))
