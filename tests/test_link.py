"""kamflat.proto.link: the ingest / writer / rotator messages and the chunk ledger, by table."""
import pytest

from kamflat.proto import link
from kamflat.proto.link import Chunk, Ledger, LinkError, Message, Report

MESSAGES = [
    Message("chunk", 7 << 32 | 3, 41, b'{"table": "acc", "values": []}\n'),
    Message("chunk", 10, 10, b"\n"),          # numbers holding 0x0A bytes
    Message("marker"),
    Message("stop"),
    Message("hello", 2),
    Message("taken", 5, 1),
    Message("reached"),
    Message("report", 5, 1, Report(3, [[2, "not valid JSON"]], 1)),
    Message("report", 5, 9, Report(0, [], 0, [[9, 12], [15, 15]], "not written: disk full")),
    Message("rotate", 2**64 - 1),
    Message("rotated", 12),
    Message("failed", 12, body="cannot open flatstore file /x/acc_129.log: gone"),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: m.kind)
def test_every_message_round_trips_with_every_field(message):
    assert link.decode(link.encode(message)) == message


def test_the_chunk_fast_path_builds_the_same_bytes():
    message = MESSAGES[0]
    packet = link.chunk(message.number, message.line, message.body)
    assert packet == link.encode(message)
    assert link.chunk_key(packet) == message.key
    assert link.chunk_line_count(link.chunk(10, 10, b"a\nb\n")) == 2   # not the header's 0x0A


@pytest.mark.parametrize("packet, error", [
    (b"C" + b"\0" * 15, "shorter than its header"),
    (b"Z" + b"\0" * 16, "unknown link message kind"),
])
def test_what_is_not_a_message_says_so(packet, error):
    with pytest.raises(LinkError, match=error):
        link.decode(packet)


A, B, C = (1, 1), (1, 5), (2, 1)

# events on writer 0 -> the keys that each event reports lost
LEDGER_CASES = [
    ("in order", [("hand", A), ("hand", B), ("take", A), ("report", A), ("take", B),
                  ("report", B)], [[], [], [], [], [], []]),
    ("a taken chunk's predecessor was read by a writer that died",
     [("hand", A), ("hand", B), ("take", B)], [[], [], [A]]),
    ("a restarted writer loses what it held, pipelined", [
        ("hand", A), ("hand", B), ("take", A), ("take", B), ("hello", None)],
     [[], [], [], [], [A, B]]),
    ("the marker tells what the dead writer had read", [
        ("hand", A), ("hand", B), ("take", A), ("hello", None), ("hand", None),
        ("reached", None)], [[], [], [], [A], [], [B]]),
    ("handed by an earlier ingest process: nothing to say", [
        ("take", C), ("report", C)], [[], []]),
    ("the stop's grace ran out", [
        ("hand", A), ("hand", B), ("take", A), ("abandon", None)], [[], [], [], [A, B]]),
]


@pytest.mark.parametrize("name, events, expected", LEDGER_CASES, ids=[c[0] for c in LEDGER_CASES])
def test_ledger(name, events, expected):
    ledger = Ledger([0])
    for (event, key), lost_keys in zip(events, expected):
        if event == "hand":
            ledger.hand(0, key, key)
            lost = []
        elif event == "report":
            entry = ledger.report(0, key)
            assert entry is None or entry.state == "done"
            lost = []
        elif event in ("take",):
            lost = ledger.take(0, key)
        else:
            lost = getattr(ledger, event)(0)
        assert [e.key for e in lost] == lost_keys, (event, key)
        assert all(e.state == "lost" for e in lost)
    assert ledger.outstanding(0) >= 0


@pytest.mark.parametrize("state, event", [("done", "report"), ("lost", "taken"),
                                          ("handed", "report"), ("taken", "taken")])
def test_a_move_not_in_the_table_is_refused(state, event):
    entry = link.Entry(A, None)
    entry.state = state
    with pytest.raises(LinkError, match="%s while %s" % (event, state)):
        entry.move(event)


@pytest.mark.parametrize("lines, ranges", [
    ([], []), ([4], [[4, 4]]), ([1, 2, 3, 7, 8, 10], [[1, 3], [7, 8], [10, 10]]),
])
def test_unwritten_ranges(lines, ranges):
    assert link.unwritten_ranges(lines) == ranges


def line(table, n):
    return b'{"table": "%s", "values": [%d]}' % (table.encode(), n)


# A chunk of 6 lines (first line 11): acc, acc, bad, mc, acc, mc; its records of acc were
# numbered from 100, of mc from 7. Given how far each table's records reached the OS
# (written counts) and how far the chunk got (pos), the lines not written.
CHUNK_LINES = [line("acc", 1), line("acc", 2), b"bad", line("mc", 3), line("acc", 4),
               line("mc", 5)]
UNWRITTEN_CASES = [
    ("all in the OS", 6, {"acc": 103, "mc": 9}, []),
    ("acc's last record buffered", 6, {"acc": 102, "mc": 9}, [15]),
    ("nothing of mc written", 6, {"acc": 103, "mc": 7}, [14, 16]),
    ("stopped at line 4", 3, {"acc": 102, "mc": 7}, [14, 15, 16]),
    ("nothing written", 0, {"acc": 100, "mc": 7}, [11, 12, 14, 15, 16]),
]


@pytest.mark.parametrize("name, pos, written, expected", UNWRITTEN_CASES,
                         ids=[c[0] for c in UNWRITTEN_CASES])
def test_chunk_knows_exactly_which_lines_are_not_written(name, pos, written, expected):
    chunk = Chunk(1, 11, b"\n".join(CHUNK_LINES) + b"\n")
    chunk.starts = {"acc": 100, "mc": 7}
    chunk.refuse(2, "not valid JSON")
    chunk.pos = pos
    chunk.written = sum(1 for i in range(pos) if i != 2)
    unwritten = chunk.unwritten(written.__getitem__)
    assert unwritten == expected
    report = chunk.report(unwritten, "not written: disk full").body
    assert report.written + len(unwritten) + report.error_count == 6
    assert report.errors == [[13, "not valid JSON"]]


def test_chunk_being_written_again_counts_lines_waiting_as_not_written():
    chunk = Chunk(1, 11, b"\n".join(CHUNK_LINES) + b"\n")
    chunk.starts = {"acc": 100, "mc": 7}
    chunk.refuse(2, "not valid JSON")
    chunk.pos, chunk.written = 6, 5
    chunk.redo({"acc"})           # acc's file was deleted: its lines go in again
    assert chunk.pos == 0 and chunk.reach() == 6 and "acc" not in chunk.starts
    # mc's are where they were; acc's wait
    assert chunk.unwritten({"mc": 9}.__getitem__) == [11, 12, 15]
