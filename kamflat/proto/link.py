"""The link between the ingest process, the writers and the rotator, as data (pure).

Every message is one SOCK_SEQPACKET packet: a header of one kind byte and two numbers,
then a body. One encoding both ways and for rotation too:

    kind      direction           number        line          body
    chunk     ingest -> writer    connection    first line    the lines (bytes)
    marker    ingest -> writer    -             -             -   "say when you get here"
    stop      ingest -> writer    -             -             -   no more chunks: finish or
                                                                  give up within the grace
    flush     ingest -> writer    -             -             -   a sender ended its stream
                                                                  and waits: write what
                                                                  flush=0 holds back now
    hello     writer -> ingest    rank          -             -   a writer (re)started
    taken     writer -> ingest    connection    first line    -   it took this chunk
    reached   writer -> ingest    -             -             -   it got to the marker
    report    writer -> ingest    connection    first line    Report (JSON)
    rotate    rotator -> writer   generation    -             -
    rotated   writer -> rotator   generation    -             -
    failed    writer -> rotator   generation    -             reason (UTF-8)

The chunk ledger (`Ledger`) is the ingest's book of where each chunk is, with its states
and moves as a table, so that after a writer died the lines it may have lost are known
exactly: the chunks it had taken and not reported, and the chunks handed to it that it
had read and not yet announced (found when its successor takes a later one, or reaches
the marker sent when it said hello).
"""
import collections
import json
import struct
from dataclasses import dataclass, field

from kamflat.proto import ingest as ingestwire

HEADER = struct.Struct("!cQQ")
MAX_PACKET = 1 << 21          # what a side reads at most as one packet (chunks are far smaller)
MAX_REPORT_ERRORS = 1000      # per chunk; the rest are counted, not described

KINDS = {   # name -> kind byte
    "chunk": b"C", "marker": b"M", "stop": b"S", "flush": b"W",
    "hello": b"H", "taken": b"T", "reached": b"K", "report": b"R",
    "rotate": b"O", "rotated": b"D", "failed": b"F",
}
_NAMES = {code: name for name, code in KINDS.items()}


class LinkError(ValueError):
    """A packet that is not a link message (never expected between our processes)."""


@dataclass
class Report:
    """What a writer says about a chunk once every line of it is settled: `written`
    records are in the file; `errors` [line, reason] for lines that can never be written
    (at most MAX_REPORT_ERRORS described, `error_count` in all); `unwritten` [first,
    last] ranges of lines that were not written (a stop that could not write them) and
    `reason` why. A line is in the file exactly when it is in no error and no range."""
    written: int = 0
    errors: list = field(default_factory=list)
    error_count: int = 0
    unwritten: list = field(default_factory=list)
    reason: str = ""

    def encode(self):
        return json.dumps({"written": self.written, "errors": self.errors,
                           "error_count": self.error_count, "unwritten": self.unwritten,
                           "reason": self.reason}).encode()

    @classmethod
    def decode(cls, body):
        fields = json.loads(body)
        return cls(fields["written"], fields["errors"], fields["error_count"],
                   fields["unwritten"], fields["reason"])

    def unwritten_count(self):
        return sum(last - first + 1 for first, last in self.unwritten)


@dataclass(frozen=True)
class Message:
    kind: str
    number: int = 0     # connection id, rank or generation (see the table above)
    line: int = 0       # a chunk's first line
    body: object = b""  # chunk: bytes; report: Report; failed: str

    @property
    def key(self):
        """Which chunk a chunk/taken/report message is about."""
        return (self.number, self.line)


def encode(message):
    body = message.body
    if message.kind == "report":
        body = body.encode()
    elif message.kind == "failed":
        body = body.encode()
    return HEADER.pack(KINDS[message.kind], message.number, message.line) + body


def decode(packet):
    if len(packet) < HEADER.size:
        raise LinkError("link packet of %d bytes, shorter than its header" % len(packet))
    code, number, line = HEADER.unpack_from(packet)
    kind = _NAMES.get(code)
    if kind is None:
        raise LinkError("unknown link message kind %r" % code)
    body = packet[HEADER.size:]
    if kind == "report":
        body = Report.decode(body)
    elif kind == "failed":
        body = body.decode(errors="replace")
    return Message(kind, number, line, body)


def chunk(conn_id, first_line, lines):
    """The packet for a chunk; built straight as bytes (the ingest's hot path)."""
    return HEADER.pack(b"C", conn_id, first_line) + lines


def chunk_line_count(packet):
    """Lines in a chunk packet (the header's numbers may hold a 0x0A byte)."""
    return packet.count(b"\n", HEADER.size)


def chunk_key(packet):
    _, number, line = HEADER.unpack_from(packet)
    return (number, line)


MARKER = encode(Message("marker"))
STOP = encode(Message("stop"))
FLUSH = encode(Message("flush"))


# ---- a chunk, as a writer works through it -----------------------------------------------

class Chunk:
    """Lines from one ingest connection, worked through record by record.

    `starts[table]` is the connection's taken_count(table) before the chunk's first
    record of that table (the chunk's records of a table are numbered from there on);
    `marks[table]`, set when every line was inserted, is the count the table's
    written_count() must reach for the whole chunk to be in the OS."""

    def __init__(self, conn_id, first_line, payload):
        self.conn_id = conn_id
        self.first_line = first_line
        self.lines = payload.split(b"\n")
        if self.lines and self.lines[-1] == b"":
            self.lines.pop()
        try:    # the same lines as text, for the writer's ingest.decode_text
            self.texts = payload.decode().split("\n")[:len(self.lines)]
        except UnicodeDecodeError:
            self.texts = None     # a line that is not UTF-8: decode_line tells which
        self.pos = 0
        self.written = 0
        self.errors = []
        self.error_count = 0
        self.bad = set()          # positions of lines that can never be written
        self.starts = {}
        self.marks = None
        self.redo_until = 0       # lines before this are inserted again (a deleted file)
        self.redo_tables = frozenset()

    def refuse(self, pos, reason):
        self.error_count += 1
        self.bad.add(pos)
        if len(self.errors) < MAX_REPORT_ERRORS:
            self.errors.append([self.first_line + pos, reason])

    def reach(self):
        """Lines before this were inserted (once, at least)."""
        return max(self.pos, self.redo_until)

    def report(self, unwritten=(), reason=""):
        """The report message; `unwritten`: line numbers not in the file (a stop)."""
        reach = self.reach()
        inserted_not_written = sum(1 for n in unwritten if n - self.first_line < reach)
        return Message("report", self.conn_id, self.first_line, Report(
            self.written - inserted_not_written, self.errors, self.error_count,
            unwritten_ranges(unwritten), reason))

    def unwritten(self, written_count):
        """The line numbers not in the OS, found by numbering the records as they were
        inserted (starts) against written_count(table)."""
        seen = collections.Counter()
        out = []
        for pos, line in enumerate(self.lines):
            if pos in self.bad:
                continue
            if pos >= self.reach():
                out.append(self.first_line + pos)      # never inserted
                continue
            table = ingestwire.decode_line(line)[0]
            if pos >= self.pos and table in self.redo_tables:
                out.append(self.first_line + pos)      # waiting to be inserted again
                continue
            number = self.starts[table] + seen[table]
            seen[table] += 1
            if number >= written_count(table):
                out.append(self.first_line + pos)
        return out

    def redo(self, tables):
        """Insert this chunk's lines of `tables` up to where it got once more."""
        self.redo_until = max(self.redo_until, self.pos)
        self.redo_tables = frozenset(tables) | self.redo_tables
        for table in tables:
            self.starts.pop(table, None)
        self.pos = 0
        self.marks = None


# ---- the chunk ledger -------------------------------------------------------------------

# A chunk's states in the ingest's book, and the moves between them.
#   (state, event) -> new state
MOVES = {
    ("handed", "taken"): "taken",       # the writer announced it took the chunk
    ("handed", "passed"): "lost",       # the writer announced a later one, or the marker:
                                        # this one was read by a writer that died
    ("taken", "report"): "done",        # written (or refused line by line) and said so
    ("taken", "hello"): "lost",         # the writer restarted while holding it
    ("handed", "abandon"): "lost",      # the stop's grace ran out before a report
    ("taken", "abandon"): "lost",
}


class Entry:
    __slots__ = ("key", "item", "state")

    def __init__(self, key, item):
        self.key, self.item, self.state = key, item, "handed"

    def move(self, event):
        new = MOVES.get((self.state, event))
        if new is None:
            raise LinkError("chunk %s: %s while %s" % (self.key, event, self.state))
        self.state = new
        return self


MARKER_KEY = None


class Ledger:
    """Per writer: the chunks handed and not yet taken (in order) and the ones taken and
    not yet reported. Every method returns the entries whose state changed to `lost`
    (their `item` is what the caller handed: it refuses those lines to the sender)."""

    def __init__(self, writers):
        self.handed = {w: collections.deque() for w in writers}
        self.taken = {w: {} for w in writers}

    def hand(self, writer, key, item):
        self.handed[writer].append(Entry(key, item))

    def take(self, writer, key):
        """The writer took chunk `key`: [lost entries]."""
        lost = self._pass_until(writer, key)
        if lost is None:
            return []       # handed over by an earlier ingest process
        entry, lost = lost
        self.taken[writer][key] = entry.move("taken")
        return lost

    def reached(self, writer):
        """The writer got to the marker: [lost entries]."""
        found = self._pass_until(writer, MARKER_KEY)
        return found[1] if found else []

    def report(self, writer, key):
        """The writer reported chunk `key`: its entry (now done), or None."""
        entry = self.taken[writer].pop(key, None)
        return entry.move("report") if entry is not None else None

    def hello(self, writer):
        """The writer restarted: what it held is lost. The caller then hands it a marker
        (hand(writer, MARKER_KEY, None)) to learn what else its predecessor had read."""
        lost = [entry.move("hello") for entry in self.taken[writer].values()]
        self.taken[writer].clear()
        return lost

    def abandon(self, writer):
        """The stop's grace ran out: every chunk of the writer not reported is lost."""
        lost = [entry.move("abandon") for entry in self.taken[writer].values()]
        lost += [entry.move("abandon") for entry in self.handed[writer]
                 if entry.key is not MARKER_KEY]
        self.handed[writer].clear()
        self.taken[writer].clear()
        return lost

    def outstanding(self, writer):
        return len(self.handed[writer]) + len(self.taken[writer])

    def _pass_until(self, writer, key):
        handed = self.handed[writer]
        if not any(entry.key == key for entry in handed):
            return None
        lost = []
        while True:
            entry = handed.popleft()
            if entry.key == key:
                return entry, lost
            if entry.key is not MARKER_KEY:
                lost.append(entry.move("passed"))


def unwritten_ranges(lines):
    """Sorted line numbers as [first, last] ranges."""
    ranges = []
    for n in lines:
        if ranges and ranges[-1][1] == n - 1:
            ranges[-1][1] = n
        else:
            ranges.append([n, n])
    return ranges
