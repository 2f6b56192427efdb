"""Reading db_flatstore files back: lines -> values, values -> named columns, files -> one stream.

The parsing half is pure (bytes in, lists out) so it can be tested with tables; the small IO
half at the bottom lists a table's files in a directory and opens them (plain or compressed).

What a flatstore line is (Kamailio 5.6, observed): values joined by `|`, ended by `\\n`, no
header, no quoting. With `encode_delimiter=1` a `|` inside a string value is written `%7C`,
but `%` itself is never escaped, so `a%7Cb` and `a|b` in the SIP message look the same on disk:
decoding `%7C` is a guess, which is why it is only done when asked (`decode=True`).
A folded SIP header can put a raw CR/LF inside a value (`foo\\r` + newline + ` bar`); such a
record spans two physical lines and the splitter joins them back (see RecordSplitter).
"""
import bisect
import bz2
import gzip
import heapq
import lzma
import os
import re
from typing import NamedTuple

from kamflat.acc import ACC_COLUMNS  # noqa: F401  (acc's fixed columns, named here too)
from kamflat.flatstore import opening
from kamflat.flatstore.opening import DamagedFileError, NotRegularFileError  # noqa: F401

# The tables acc writes by default (db_table_acc, db_table_missed_calls).
ACC_TABLES = ("acc", "missed_calls")

ENCODED_DELIMITER = "%7C"  # what encode_delimiter writes for `|` (uppercase hex, as observed)

# Rotated-file suffixes we can decompress with the standard library, and ones we cannot.
# (.gz files are read with opening.GzipInflater, faster; gzip.open opens them alike.)
DECOMPRESSORS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
UNREADABLE_SUFFIXES = (".zst", ".lz4", ".lzo", ".Z", ".zip", ".br")


class RecordSplitter:
    """Cuts a byte stream into whole records; a partial last line waits for more data.

    feed(data) buffers; records() returns the complete records so far (without their `\\n`).
    A line ending in `\\r` followed by a line starting with a space or TAB is one record cut
    by a folded SIP header, and the two lines are joined back with `\\n`. Whether a `\\r` line
    at the very end of the data so far has such a continuation is not known yet:
    records(hold_cr=True) keeps it back, records() hands it out as complete.
    """

    def __init__(self):
        self._buffer = b""

    def feed(self, data):
        self._buffer += data

    @property
    def pending(self):
        """Bytes not handed out yet: an incomplete last line (waiting for its `\\n`), after a
        CR line held back for its continuation if there is one."""
        return self._buffer

    def records(self, hold_cr=False):
        end = self._buffer.rfind(b"\n")
        if end < 0:
            return []
        complete, rest = self._buffer[:end], self._buffer[end + 1:]
        out = split_block(complete)
        # a CR line whose next line has begun with SP/TAB goes on there; with hold_cr, also
        # one with nothing after it yet
        if out[-1].endswith(b"\r") and (rest[:1] in (b" ", b"\t") or (hold_cr and not rest)):
            rest = out.pop() + b"\n" + rest
        self._buffer = rest
        return out

    def block(self, hold_cr=False):
        """records(hold_cr) as one bytes, joined by newlines as they are on disk (split_block
        cuts it back into them); None when there are none."""
        end = self._buffer.rfind(b"\n")
        if end < 0:
            return None
        complete = self._buffer[:end]
        if b"\r" in complete:      # maybe a folded record or a CR line to hold back
            records = self.records(hold_cr)
            return b"\n".join(records) if records else None
        self._buffer = self._buffer[end + 1:]
        return complete


def split_block(block):
    """Records joined by newlines (bytes) -> the records: a line ending in `\\r` and the next
    line, starting with a space or TAB, are one folded record (see RecordSplitter)."""
    # (no CR at all is one memchr; the 3-byte searches cost more than the split)
    if b"\r" not in block or (b"\r\n " not in block and b"\r\n\t" not in block):
        return block.split(b"\n")          # no folded record: one record a line
    out = []
    for line in block.split(b"\n"):
        if out and out[-1].endswith(b"\r") and line[:1] in (b" ", b"\t"):
            out[-1] += b"\n" + line
        else:
            out.append(line)
    return out


def split_records(data):
    """All whole records in `data` (bytes); a trailing line without `\\n` is returned too."""
    splitter = RecordSplitter()
    splitter.feed(data)
    records = splitter.records()
    if splitter.pending:
        records.append(splitter.pending)
    return records


def parse_record(raw, decode=False, errors="surrogateescape"):
    """One record (bytes, without `\\n`) -> list of str values.

    Values are decoded as UTF-8; bytes that are not UTF-8 are kept losslessly as surrogate
    escapes by default (errors="surrogateescape"). decode=True turns `%7C` back into `|`,
    which is ambiguous (see the module docstring). NULL and empty strings both read as "".
    """
    text = raw.decode("utf-8", errors) if isinstance(raw, bytes) else raw
    values = text.split("|")
    if decode:
        values = [decode_value(v) for v in values]
    return values


def decode_value(value):
    """`%7C` -> `|`: undoes encode_delimiter, but a `%7C` that was literally sent becomes `|` too."""
    return value.replace(ENCODED_DELIMITER, "|")


def acc_columns(extra=()):
    """Column names of an acc record: the 7 fixed ones, then the db_extra names in config order."""
    return list(ACC_COLUMNS) + list(extra)


def name_values(values, keys):
    """Values -> {column: value}. Values past the known keys go under "_extra" (a list), so a
    record with a raw `|` (encode_delimiter=0) or a changed db_extra is still shown whole."""
    record = dict(zip(keys, values))
    if len(values) > len(keys):
        record["_extra"] = list(values[len(keys):])
    return record


def time_key(raw, time_index, previous):
    """Sort key of a record (bytes): its time column as an int, else the previous record's key."""
    values = raw.split(b"|", time_index + 1)   # only as far as the time column: fast
    if time_index >= len(values):
        return previous
    try:
        return int(values[time_index])
    except ValueError:
        return previous


def time_keys(records, time_index, previous=0):
    """[time_key()] of consecutive records, `previous` being the key before the first
    (all at once while every time column is a number, else record by record)."""
    cut = time_index + 1
    try:
        return [int(raw.split(b"|", cut)[time_index]) for raw in records]
    except (IndexError, ValueError):
        pass
    keys = []
    for raw in records:
        previous = time_key(raw, time_index, previous)
        keys.append(previous)
    return keys


# ---- file names ------------------------------------------------------------------------

class TableFile(NamedTuple):
    """A file that belongs to a table: `<table>_<N>.log` plus an optional rotation suffix."""
    name: str
    number: int      # the N in <table>_<N>.log (rank + 128 for workers, -rank otherwise)
    suffix: str      # "" for the live file, ".1", "-20260101", ".old", ".1.gz", ...

    @property
    def rotated(self):
        return bool(self.suffix)

    @property
    def compression(self):
        """".gz"/".bz2"/".xz" if readable compressed, "unreadable" if compressed otherwise."""
        for ext in DECOMPRESSORS:
            if self.suffix.endswith(ext):
                return ext
        if self.suffix.endswith(UNREADABLE_SUFFIXES):
            return "unreadable"
        return ""


def table_file_pattern(table):
    return re.compile(r"%s_(\d+)\.log(.*)\Z" % re.escape(table), re.DOTALL)


def match_table_file(name, table, rotated=False, pattern=None):
    """`name` -> TableFile if it is one of `table`'s files (live, or rotated when asked)."""
    match = (pattern or table_file_pattern(table)).match(name)
    if not match or (match.group(2) and not rotated):
        return None
    return TableFile(name, int(match.group(1)), match.group(2))


def select_table_files(names, table, rotated=False):
    """The names (from a directory listing) that are `table`'s files, live ones by N."""
    pattern = table_file_pattern(table)
    found = [match_table_file(n, table, rotated, pattern) for n in names]
    return sorted((f for f in found if f), key=lambda f: (f.rotated, f.number, f.name))


# ---- IO: listing, reading, merging -------------------------------------------------------

class TableRecord(NamedTuple):
    raw: bytes       # the record as on disk, without its `\n`
    file: str        # the file name it was read from


def list_table_files(directory, table, rotated=False):
    """`table`'s files in `directory`, oldest first: rotated ones by mtime, then the live ones.

    Compressed rotated files that the standard library cannot read are left out.
    """
    names = os.listdir(directory)
    files = [f for f in select_table_files(names, table, rotated) if f.compression != "unreadable"]

    def age(f):
        try:
            mtime = os.stat(os.path.join(directory, f.name)).st_mtime
        except FileNotFoundError:  # renamed or compressed away while we listed
            mtime = float("inf")
        return (not f.rotated, mtime if f.rotated else 0, f.number, f.name)
    return sorted(files, key=age)


def read_table_file(directory, table_file):
    """Yield TableRecords of one file (decompressing .gz/.bz2/.xz); a missing file yields none."""
    for records in read_file_chunks(directory, table_file):
        for raw in records:
            yield TableRecord(raw, table_file.name)


# Bytes read at a time. Small: a merge holds one chunk of every file, and the chunks (and
# what cat makes of them) stay in the CPU cache until they are printed.
READ_SIZE = 1 << 14


def read_file_chunks(directory, table_file):
    """Yield one file's records (bytes without their `\n`) as lists, a chunk at a time,
    decompressing .gz/.bz2/.xz; a missing file yields none. A torn last line (Kamailio
    flush=0 killed) is still given."""
    for block in read_file_blocks(directory, table_file):
        yield split_block(block)


def read_file_blocks(directory, table_file, on_unreadable=None):
    """read_file_chunks()'s chunks, each as one bytes: its records joined by newlines, as
    they are on disk (split_block() gives the records).

    A compressed file that cannot be decompressed to its end gives its records up to the
    damage (not the incomplete one there), then raises DamagedFileError, or passes it to
    on_unreadable(error) and ends. A name that is not a regular file gives nothing, and
    NotRegularFileError the same way."""
    path = os.path.join(directory, table_file.name)
    compression = table_file.compression
    try:
        raw = opening.open_regular(path)
    except FileNotFoundError:
        return
    except opening.NotRegularFileError as error:
        if on_unreadable is None:
            raise
        on_unreadable(error)
        return
    if compression == ".gz":
        stream, chunks = raw, opening.read_ahead(opening.GzipInflater(raw).read, READ_SIZE)
    else:    # bz2 and lzma leave a file object they were given open: `with raw` closes it
        stream = DECOMPRESSORS[compression](raw, "rb") if compression else raw
        chunks = iter(lambda: stream.read(READ_SIZE), b"")
    splitter = RecordSplitter()
    with raw, stream:
        try:
            for chunk in chunks:
                splitter.feed(chunk)
                found = [splitter.block(hold_cr=True)]
                if found[0] is not None:
                    # handed over, not held here too while the caller works on it: its
                    # memory is free again as soon as the caller is done (measurably
                    # faster, the next blocks reuse it)
                    yield found.pop()
        except opening.DECOMPRESSION_ERRORS as error:
            if not compression:
                raise
            block = splitter.block()     # the whole records before the damage
            if block is not None:
                yield block
            damage = opening.DamagedFileError(path, error)
            if on_unreadable is None:
                raise damage from None
            on_unreadable(damage)
            return
        finally:
            if compression == ".gz":
                chunks.close()   # the read ahead ends before the file is closed
    block = splitter.block()
    if splitter.pending:
        block = splitter.pending if block is None else block + b"\n" + splitter.pending
    if block is not None:
        yield block


def merge_chunks(streams, time_index=None):
    """Merge per-file streams of record chunks by the time column into runs: yields
    (stream number, records), the records consecutive ones of that stream (see
    merge_keyed). Without a time column the streams are simply concatenated in the
    order given."""
    if time_index is None:
        for order, stream in enumerate(streams):
            for records in stream:
                yield order, records
        return
    yield from merge_keyed([keyed_chunks(stream, time_index) for stream in streams])


def keyed_chunks(chunks, time_index):
    """(records, their time_keys()) for each chunk of one stream; empty chunks are left out."""
    previous = 0
    for records in chunks:
        if records:
            keys = time_keys(records, time_index, previous)
            previous = keys[-1]
            yield records, keys


def merge_keyed(streams):
    """Merge streams of (items, time keys) chunks into runs: yields (stream number, items),
    the items consecutive ones of that stream. An item is whatever stands for a record
    (the record, or what is printed for it); keys[i] is the time key of items[i].

    The order is heapq.merge's over (time key, stream number, position) of every item
    (stable: ties keep file, then line order; a file out of time order is merged as
    heapq.merge merges it), but a run of items that go out one after the other costs
    one step, not one per item."""
    cursors = []
    heap = []
    for order, stream in enumerate(streams):
        cursor = _Cursor(order, iter(stream))
        cursors.append(cursor)
        if cursor.next_chunk():
            heap.append((cursor.keys[0], order))
    heapq.heapify(heap)
    while heap:
        key, order = heap[0]
        cursor = cursors[order]
        if len(heap) == 1:
            end = len(cursor.keys)
        else:
            other = min(heap[1], heap[2]) if len(heap) > 2 else heap[1]
            end = cursor.run_end(other)
        yield order, cursor.items[cursor.pos:end]
        cursor.pos = end
        if end == len(cursor.keys) and not cursor.next_chunk():
            heapq.heappop(heap)
        else:
            heapq.heapreplace(heap, (cursor.keys[cursor.pos], order))


class _Cursor:
    """Where merge_keyed() is in one stream: its current chunk's items and time keys,
    whether the keys are in order, and the position of the next item."""
    __slots__ = ("order", "stream", "items", "keys", "in_order", "pos")

    def __init__(self, order, stream):
        self.order, self.stream = order, stream

    def next_chunk(self):
        for items, keys in self.stream:
            if keys:
                self.items, self.keys = items, keys
                self.in_order = keys == sorted(keys)
                self.pos = 0
                return True
        return False

    def run_end(self, other):
        """Where the run from pos ends: the items before it sort before `other`, the
        (key, stream number) of the head of another stream."""
        keys, pos = self.keys, self.pos
        limit, other_order = other
        if self.in_order:
            if self.order < other_order:
                return bisect.bisect_right(keys, limit, pos)
            return bisect.bisect_left(keys, limit, pos)
        end = pos + 1          # the head itself is the smallest
        count = len(keys)
        while end < count and (keys[end] < limit
                               or (keys[end] == limit and self.order < other_order)):
            end += 1
        return end


def read_table_chunks(directory, table, rotated=False, time_index=None):
    """Every record of `table` in `directory` merged across its files (see merge_chunks),
    as runs: yields (file name, records)."""
    files = list_table_files(directory, table, rotated)
    streams = [read_file_chunks(directory, f) for f in files]
    for order, records in merge_chunks(streams, time_index):
        yield files[order].name, records


def read_table(directory, table, rotated=False, time_index=None):
    """Every record of `table` in `directory`, merged across its files (see merge_chunks),
    as TableRecords."""
    for name, records in read_table_chunks(directory, table, rotated, time_index):
        for raw in records:
            yield TableRecord(raw, name)
