# Runs under MicroPython: the test scripts' checks. Each prints "ok <what>" or "FAIL <what>"; done() prints
# "done <failures>", which the pytest side (tests/firmware/conftest.py assert_all_ok) reads.
fails = 0


def fail(*what):
    global fails
    fails += 1
    print("FAIL", *what)


def check(name, got, want):
    if got == want:
        print("ok", name)
    else:
        fail(name, repr(got), "!=", repr(want))


def raises(name, exc, f):
    try:
        f()
        fail(name, "did not raise")
    except exc as e:
        print("ok", name, "->", e)


def done():
    print("done", fails)
