# Runs under MicroPython: the flash ring buffer. Modes: write (forever or COUNT), read, unit.
import json
import sys

from ringbuf import RingBuffer

mode, root = sys.argv[1], sys.argv[2]


def payload(tag, size):
    head = b"rec-%d-" % tag
    body = bytes((tag * 7 + k) & 0xFF for k in range(max(0, size - len(head))))
    return head + body


def sizeof(tag):
    return 40 + (tag * 37) % 700


def check_payload(tag, p):
    return p == payload(tag, sizeof(tag))


if mode == "write":
    rb = RingBuffer(root, seg_bytes=int(sys.argv[4]), max_segs=int(sys.argv[5]))
    tag = rb.last_tag + 1
    count = int(sys.argv[3])
    print("start", tag)
    while count < 0 or count > 0:
        rb.append(tag, payload(tag, sizeof(tag)))
        print("appended", tag)
        tag += 1
        count -= 1

elif mode == "read":
    rb = RingBuffer(root, seg_bytes=int(sys.argv[3]), max_segs=int(sys.argv[4]))
    tags = []
    bad = 0
    for tag, p, _pos in rb.peek(100000):
        tags.append(tag)
        if not check_payload(tag, p):
            bad += 1
    st = rb.stats()
    st["tags"] = tags
    st["bad_payloads"] = bad
    if len(sys.argv) > 5:  # consume N then report again after a reopen
        n = int(sys.argv[5])
        recs = rb.peek(n)
        if recs:
            rb.consume(recs[-1][2], recs[-1][0], len(recs))
        rb2 = RingBuffer(root, seg_bytes=int(sys.argv[3]), max_segs=int(sys.argv[4]))
        st["after_consume"] = [r[0] for r in rb2.peek(100000)]
        st["pending_after"] = rb2.pending
    print(json.dumps(st))

elif mode == "unit":
    from mpcheck import check, done

    rb = RingBuffer(root, seg_bytes=2048, max_segs=4)
    check("empty", (rb.pending, rb.peek(5)), (0, []))
    for t in range(1, 11):
        rb.append(t, payload(t, 300))
    check("pending", rb.pending, 10)
    recs = rb.peek(3)
    check("peek order", [r[0] for r in recs], [1, 2, 3])
    check("peek payloads", [check_payload_300 for check_payload_300 in [r[1] == payload(r[0], 300) for r in recs]],
          [True] * 3)
    rb.consume(recs[1][2], 2, 2)
    check("consume two", [r[0] for r in rb.peek(100)], list(range(3, 11)))
    rb = RingBuffer(root, seg_bytes=2048, max_segs=4)
    check("reopen keeps cursor", ([r[0] for r in rb.peek(100)], rb.pending), (list(range(3, 11)), 8))
    check("last tag survives", rb.last_tag, 10)
    # Fill past the bound: the oldest segments go, counted as dropped, the newest stay.
    for t in range(11, 41):
        rb.append(t, payload(t, 300))
    tags = [r[0] for r in rb.peek(1000)]
    check("bounded", rb.used_bytes() <= 2048 * 4, True)
    check("newest kept", tags[-1], 40)
    check("contiguous", tags, list(range(tags[0], 41)))
    check("dropped counted", rb.dropped, tags[0] - 3)
    check("pending matches", rb.pending, len(tags))
    recs = rb.peek(1000)
    rb.consume(recs[-1][2], recs[-1][0], len(recs))
    check("all consumed", (rb.pending, rb.peek(10)), (0, []))
    check("consumed segments deleted", len(rb._segs()), 1)
    rb = RingBuffer(root, seg_bytes=2048, max_segs=4)
    check("empty after reopen", (rb.pending, rb.last_tag), (0, 40))
    try:
        rb.append(41, b"x" * 3000)
        check("oversize refused", False, True)
    except ValueError:
        print("ok oversize refused")
    done()
