"""The outbox: batches are atomic, sequence numbers persist, only the cloud's ack removes a batch."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from carbonlink.edge.outbox import Outbox
from carbonlink.kernel.wire import Batch, Reading, parse_batch, sign_batch, verify_batch

KEY = Ed25519PrivateKey.generate()


def sign(b: Batch) -> Batch:
    return sign_batch(b, KEY)


def readings(n: int, start: int = 0) -> list[Reading]:
    return [Reading.make("d", "p", 1_700_000_000_000 + start + i, float(i), "u") for i in range(n)]


def test_cut_ack_and_sequence_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    ob = Outbox(path, "gw-1")
    ob.append(readings(7))
    b1 = ob.cut_batch(5, sign)
    b2 = ob.cut_batch(5, sign)
    assert b1 and b2 and (b1.seq, b1.n, b2.seq, b2.n) == (1, 5, 2, 2)
    assert ob.cut_batch(5, sign) is None
    parsed = parse_batch(b1.payload)
    verify_batch(parsed, KEY.public_key(), b1.payload)
    assert [r.ts_ms for r in parsed.readings] == [1_700_000_000_000 + i for i in range(5)]
    assert ob.ack(1) == 5
    assert ob.ack(1) == 0  # a repeated ack changes nothing
    ob.close()

    ob = Outbox(path, "gw-1")  # a restart: the unacked batch is still there, numbering continues
    assert [b.seq for b in ob.unacked()] == [2]
    ob.append(readings(1, 100))
    b3 = ob.cut_batch(5, sign)
    assert b3 is not None and b3.seq == 3
    ob.close()


def test_failed_signing_leaves_no_torn_batch(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite", "gw-1")
    ob.append(readings(3))

    def broken(_: Batch) -> Batch:
        raise RuntimeError("power cut while signing")

    try:
        ob.cut_batch(10, broken)
    except RuntimeError:
        pass
    assert ob.pending_count() == 3 and ob.unacked() == [] and ob.next_seq() == 1
    assert ob.cut_batch(10, sign) is not None and ob.next_seq() == 2


def test_a_new_outbox_and_its_folder_are_the_owners_only(tmp_path: Path) -> None:
    path = tmp_path / "data" / "edge" / "outbox.sqlite"
    ob = Outbox(path, "gw-1")
    ob.append([Reading.make("cems-1", "so2", 1_767_225_600_000, 1.0, "mg/m³")])
    assert path.parent.stat().st_mode & 0o777 == 0o700
    for p in [path, *path.parent.glob("outbox.sqlite-*")]:
        assert p.stat().st_mode & 0o077 == 0, (p, oct(p.stat().st_mode))
