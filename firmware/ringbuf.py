# A durable, bounded ring buffer in flash: append-only segment files.
#
# Record: magic "\xc1Z" | length u16 | tag u32 | crc32 u32 | payload. The CRC covers length, tag
# and payload, so a torn or flipped record is found and skipped; after a bad header the reader
# resynchronises on the next magic. Nothing is ever rewritten in place: appends go to the newest
# segment, consumption moves a cursor kept in "head" (written to a temporary file and renamed, which
# is atomic on LittleFS), and whole segments are deleted once the cursor is past them. When the buffer
# is full the oldest segment is dropped and its unsent records are counted as dropped.
import os
import gc
import struct
from binascii import crc32

MAGIC = b"\xc1Z"
HDR = "<2sHII"
HLEN = 12
MAX_PAYLOAD = 0xFFFF


def _crc(hdr_tail, payload):
    c = crc32(hdr_tail)
    for p in payload if isinstance(payload, (list, tuple)) else (payload,):
        c = crc32(p, c)
    return c & 0xFFFFFFFF



STREAM = 2  # _records(payloads=STREAM): yield Stored handles instead of bytes


class Stored:
    # A record's payload left in flash: its length, and a way to copy it to a stream in chunks.
    # Valid until the buffer moves on to the next record (it shares the segment's open file).
    def __init__(self, f, off, n, chunk):
        self.f, self.off, self.n, self.chunk = f, off, n, chunk

    def __len__(self):
        return self.n

    def write_to(self, out):
        f, buf, left = self.f, self.chunk, self.n
        f.seek(self.off)
        while left:
            k = f.readinto(buf) if left >= len(buf) else f.readinto(memoryview(buf)[:left])
            if not k:
                raise OSError("record shrank while sending")
            out.write(memoryview(buf)[:k])
            left -= k

class RingBuffer:
    def __init__(self, root, seg_bytes=16384, max_segs=16):
        self.root = root
        self.seg_bytes = seg_bytes
        self.max_segs = max_segs
        self.corrupt = 0  # bad records (CRC, torn, garbage) skipped
        self.dropped = 0  # unsent records lost to the size bound
        self.pending = 0
        self.last_tag = 0
        self._chunk = bytearray(256)
        try:
            os.mkdir(root)
        except OSError:
            pass
        self._open()

    # --- files ---------------------------------------------------------------------------

    def _path(self, seg):
        return "%s/%08d.seg" % (self.root, seg)

    def _segs(self):
        out = []
        for name in os.listdir(self.root):
            if name.endswith(".seg") and len(name) == 12:
                try:
                    out.append(int(name[:8]))
                except ValueError:
                    pass
        out.sort()
        return out

    def _size(self, seg):
        try:
            return os.stat(self._path(seg))[6]
        except OSError:
            return 0

    def _write_head(self):
        tmp = self.root + "/head.tmp"
        with open(tmp, "w") as f:
            f.write("%d %d %d\n" % (self.cur[0], self.cur[1], self.acked_tag))
        os.rename(tmp, self.root + "/head")

    def _read_head(self):
        try:
            with open(self.root + "/head") as f:
                a = f.read().split()
            return int(a[0]), int(a[1]), int(a[2])
        except (OSError, ValueError, IndexError):
            return 0, 0, 0

    # --- scanning ---------------------------------------------------------------------------

    def _records(self, seg, off, count=True, payloads=False):
        # Yield (tag, payload or None, start, end) of each valid record in one segment from off; skip damage.
        try:
            f = open(self._path(seg), "rb")
        except OSError:
            return
        try:
            f.seek(off)
            bad = False
            while True:
                hdr = f.read(HLEN)
                if len(hdr) < HLEN:
                    if hdr and count:
                        self.corrupt += 1  # torn header at the end
                    return
                magic, n, tag, crc = struct.unpack(HDR, hdr)
                if magic == MAGIC and n <= self.seg_bytes - HLEN and self._crc_file(f, hdr[2:8], n) == crc:
                    bad = False
                    payload = None
                    if payloads == STREAM:
                        # Streamed from flash in small chunks: delivery never needs one contiguous
                        # block of a record's size, which a fragmented 64 KB heap may not have.
                        payload = Stored(f, off + HLEN, n, self._chunk)
                    elif payloads:
                        f.seek(off + HLEN)
                        gc.collect()  # the heap does not compact: free what is dead before a large block
                        payload = f.read(n)
                    yield tag, payload, off, off + HLEN + n
                    off += HLEN + n
                    f.seek(off)
                    continue
                if not bad and count:
                    self.corrupt += 1  # one damaged region counts once
                bad = True
                off = self._resync(f, off + 1)
                if off < 0:
                    return
                f.seek(off)
        finally:
            f.close()

    def _crc_file(self, f, hdr_tail, n):
        # CRC of the next n bytes in small chunks: a corrupt length never makes us allocate it. -1 if short.
        c = crc32(hdr_tail)
        buf = self._chunk
        while n:
            k = f.readinto(buf) if n >= len(buf) else f.readinto(memoryview(buf)[:n])
            if not k:
                return -1
            c = crc32(memoryview(buf)[:k], c)
            n -= k
        return c & 0xFFFFFFFF

    def _resync(self, f, off):
        # Find the next magic at or after off, reading small chunks; -1 if none.
        f.seek(off)
        prev = b""
        base = off
        while True:
            chunk = f.read(256)
            if not chunk:
                return -1
            buf = prev + chunk
            i = buf.find(MAGIC)
            if i >= 0:
                return base - len(prev) + i
            prev = buf[-1:]
            base += len(chunk)

    def _open(self):
        segs = self._segs()
        hseg, hoff, self.acked_tag = self._read_head()
        self.last_tag = self.acked_tag
        if not segs:
            segs = [max(hseg, 1)]
            open(self._path(segs[0]), "wb").close()
        if hseg < segs[0] or hseg > segs[-1]:
            hseg, hoff = segs[0], 0
        self.cur = (hseg, hoff)
        self.pending = 0
        for seg in segs:
            start = hoff if seg == hseg else 0
            end = start
            for tag, _, _, end in self._records(seg, 0 if seg < hseg else start):
                if tag > self.last_tag:
                    self.last_tag = tag
                if seg > hseg or (seg == hseg and end > hoff):
                    self.pending += 1
        self.tail = segs[-1]
        # Never append after damage: a torn tail would hide the next good record from a reader.
        size = self._size(self.tail)
        if size and self._valid_end(self.tail) != size:
            self._new_segment()

    def _valid_end(self, seg):
        end = 0
        for rec in self._records(seg, 0, False):
            end = rec[3]
        return end

    def _new_segment(self):
        self.tail += 1
        open(self._path(self.tail), "wb").close()
        segs = self._segs()
        while len(segs) > self.max_segs:
            self._drop(segs.pop(0))

    def _drop(self, seg):
        hseg, hoff = self.cur
        if seg >= hseg:
            for _rec in self._records(seg, hoff if seg == hseg else 0, False):
                self.dropped += 1
                self.pending -= 1
        os.remove(self._path(seg))
        if seg >= hseg:
            self.cur = (seg + 1, 0)
            self._write_head()

    # --- the interface ------------------------------------------------------------------------

    def append(self, tag, payload):
        """Store one record durably; returns once it is on flash. ``payload``: bytes, or a list of
        pieces written one after another, so no block of the record's size is ever allocated."""
        parts = payload if isinstance(payload, (list, tuple)) else (payload,)
        n = 0
        for p in parts:
            n += len(p)
        if not 0 < n <= min(MAX_PAYLOAD, self.seg_bytes - HLEN):
            raise ValueError("record must be 1 byte to the segment size")
        size = self._size(self.tail)
        if size and size + HLEN + n > self.seg_bytes:
            self._new_segment()
        tail = struct.pack("<HI", n, tag)
        hdr = MAGIC + tail + struct.pack("<I", _crc(tail, payload))
        with open(self._path(self.tail), "ab") as f:
            f.write(hdr)
            for p in parts:
                f.write(p)
        self.pending += 1
        if tag > self.last_tag:
            self.last_tag = tag

    def each(self, limit, stream=False):
        """The oldest unconsumed records one at a time: (tag, payload, position after it). Only one
        payload is in RAM at a time if the caller lets go of it before asking for the next."""
        n = 0
        hseg, hoff = self.cur
        for seg in self._segs():
            if seg < hseg:
                continue
            recs = self._records(seg, hoff if seg == hseg else 0, False, STREAM if stream else True)
            for tag, payload, _, end in recs:
                yield tag, payload, (seg, end)
                n += 1
                if n >= limit:
                    recs.close()  # closes the file now, not at the next collection
                    return

    def peek(self, limit):
        """The oldest unconsumed records: a list of (tag, payload, position after it)."""
        return list(self.each(limit))

    def consume(self, pos, tag, n=1):
        """Move the cursor past the record that ends at pos (and the n records up to it)."""
        self.cur = pos
        if tag > self.acked_tag:
            self.acked_tag = tag
        self.pending = max(0, self.pending - n)
        self._write_head()
        for seg in self._segs():
            if seg < pos[0] or (seg < self.tail and seg == pos[0] and pos[1] >= self._size(seg)):
                os.remove(self._path(seg))

    def used_bytes(self):
        return sum(self._size(s) for s in self._segs())

    def stats(self):
        return {"pending": self.pending, "corrupt": self.corrupt, "dropped": self.dropped,
                "bytes": self.used_bytes(), "last_tag": self.last_tag}
