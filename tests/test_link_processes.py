"""Writer, Ingest and the rotator driven in this process over socketpairs, no fork: the
paths whole-server tests cannot aim at (a report lost, a writer restarted mid-chunk, a
file deleted between a write and its report, a rotation answer late, a stop that
cannot write)."""
import json
import os
import selectors
import socket
import threading
import time

import pytest

from kamflat.flatstore.connection import connect
from kamflat.proto import link
from kamflat.server.ingest import Ingest
from kamflat.server.rotation import Rotator
from kamflat.server.shm import SharedState
from kamflat.server.linksock import PacketReader, seqpacket_pair
from kamflat.server.writer import Writer
from kamflat.tools import tally


def payload(tag, count):
    return b"".join(json.dumps(tally.record(tag, i)).encode() + b"\n" for i in range(count))


class Link:
    """A writer (rank 1) on real sockets and files; `ingest` and `control` are the other
    ends, as the ingest and management processes hold them."""

    def __init__(self, directory, flush=1):
        self.directory = str(directory)
        self.state = SharedState()
        self.state.slot = 1
        self.ingest, self.writer_end = seqpacket_pair()
        self.control, self.writer_control = seqpacket_pair(1 << 16)
        self.writer = self.new_writer(flush)

    def new_writer(self, flush=1):
        """A writer process's state, fresh: what a restarted writer starts with."""
        conn = connect("flatstore:" + self.directory, rank=1, flush=flush,
                       written_cell=lambda t: self.state.cell("flatstore", t + "_written"),
                       journal=self.state.journal())
        self.writer_end.settimeout(1.0)
        return Writer(1, conn, self.state, data_sock=self.writer_end,
                      control_sock=self.writer_control, grace=0.2)

    def hand(self, first_line, tag, count):
        self.writer.take(link.chunk(7, first_line, payload(tag, count)))

    def told(self):
        """What the writer said to the ingest so far."""
        out = []
        while True:
            try:
                out.append(link.decode(self.ingest.recv(1 << 21, socket.MSG_DONTWAIT)))
            except BlockingIOError:
                return out

    def reports(self):
        return [m for m in self.told() if m.kind == "report"]

    def file_lines(self):
        return tally.file_lines(self.directory)

    def written(self):
        return self.state.cell("flatstore", "acc_written")[0]


def test_a_packet_reader_gives_each_packet_whole_as_recv_does():
    a, b = seqpacket_pair()
    reader = PacketReader(b)
    b.setblocking(False)
    for packet in (link.chunk(7, 1, b"x" * 200_000 + b"\n"), link.encode(link.Message("reached"))):
        a.send(packet)
    assert reader.recv() == link.chunk(7, 1, b"x" * 200_000 + b"\n")
    assert link.decode(reader.recv()).kind == "reached"    # the shorter one after, alone
    with pytest.raises(BlockingIOError):
        reader.recv()
    a.close()
    assert reader.recv() == b""
    b.close()


def test_flush_0_reports_a_chunk_only_after_its_block_write(tmp_path):
    rig = Link(tmp_path, flush=0)
    rig.hand(1, "a", 10)
    rig.writer.step()
    assert [m.kind for m in rig.told()] == ["taken"]     # buffered: not reported yet
    assert rig.file_lines() == []
    rig.writer.age_out_buffer(now=True)
    rig.writer.settle()
    (report,) = rig.reports()
    assert report.key == (7, 1) and report.body.written == 10


def test_flush_0_writes_at_once_when_the_ingest_says_a_sender_waits(tmp_path):
    rig = Link(tmp_path, flush=0)
    rig.hand(1, "a", 10)
    rig.writer.step()
    rig.writer.take(link.FLUSH)       # the sender ended its stream: no BUFFER_AGE wait
    rig.writer.settle()
    assert len(rig.file_lines()) == 10
    assert [m.body.written for m in rig.reports()] == [10]
    assert len(rig.file_lines()) == 10 == rig.written()


def test_a_file_deleted_between_write_and_report_is_written_again(tmp_path):
    rig = Link(tmp_path, flush=1)
    rig.hand(1, "a", 10)
    rig.writer.step()
    assert rig.reports()[0].body.written == 10
    os.unlink(tmp_path / "acc_129.log")       # the operator's rm: a's records go with it
    rig.writer.take(link.chunk(7, 11, payload("b", 10)))
    rig.writer.work()              # b goes into the deleted file
    rig.writer.settle()            # noticed before the report: b is written again
    rig.writer.step()
    (report,) = rig.reports()
    assert report.key == (7, 11) and report.body.written == 10
    counted = tally.count({tally.record_id("b", i) for i in range(10)},
                          {tally.record_id("b", i) for i in range(10)}, rig.file_lines())
    assert counted["on disk"] == 10 and counted["lost-acknowledged"] == 0
    assert rig.state.cell("flatstore", "acc_reopened")[0] == 1
    assert rig.written() == 20       # a's 10 (reported, then deleted) and b's 10, once


def test_a_stop_that_cannot_write_reports_every_line_not_written(tmp_path):
    rig = Link(tmp_path / "missing", flush=1)
    rig.hand(1, "a", 5)
    rig.writer.step()                         # the directory is missing: it waits
    assert rig.reports() == []
    rig.writer.stopping = True
    rig.writer.take(link.STOP)                # the ingest: no more chunks
    time.sleep(0.25)                          # the writer's grace (0.2 s) runs out
    rig.writer.step()
    (report,) = rig.reports()
    assert report.body.unwritten == [[1, 5]] and report.body.written == 0
    assert report.body.reason.startswith("not written: cannot open flatstore file")
    assert rig.writer.not_written == 5 and rig.writer.finished()


def test_a_late_rotation_answer_is_not_taken_for_the_next_rotation(tmp_path):
    rig = Link(tmp_path)
    rotator = Rotator({1: rig.control}, 0.05, rig.state)
    assert rotator.rotate() == ["writer 1 did not close its files within 50 ms"]
    rig.writer.on_control()                   # answers rotation 1, too late
    answering = threading.Thread(target=lambda: (wait_readable(rig.writer_control),
                                                 rig.writer.on_control()))
    answering.start()
    rotator.timeout = 5.0
    try:
        assert rotator.rotate() == []         # rotation 2's own answer, not 1's
    finally:
        answering.join(10)
    assert rotator.generation == 2


def wait_readable(sock, timeout=5.0):
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_READ)
        assert sel.select(timeout), "nothing to read"


class Sender:
    """A sender connected to an in-process Ingest."""

    def __init__(self, ingest, listener, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        ingest.on_accept(listener, selectors.EVENT_READ)

    def answers(self, ingest):
        self.sock.settimeout(0.05)
        data = b""
        deadline = time.monotonic() + 5
        while not data.endswith(b"\n") or b'"done"' not in data and b'"stopping"' not in data:
            assert time.monotonic() < deadline, data
            ingest.step(0.01)
            try:
                data += self.sock.recv(1 << 16)
            except socket.timeout:
                pass
        return [json.loads(line) for line in data.splitlines()]


@pytest.fixture
def ingest_rig(tmp_path):
    rig = Link(tmp_path)
    path = str(tmp_path / "ingest.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(8)
    ingest = Ingest(listener, [rig.ingest], rig.state)
    ingest.setup()
    yield rig, ingest, Sender(ingest, listener, path)
    listener.close()


def test_a_writer_restarted_mid_chunk_its_lines_are_refused_and_the_tail_cut(ingest_rig,
                                                                             tmp_path):
    rig, ingest, sender = ingest_rig
    sender.sock.sendall(payload("a", 5))
    sender.sock.shutdown(socket.SHUT_WR)
    while not ingest.ledger.handed[rig.ingest.fileno()]:
        ingest.step(0.05)
    rig.writer.take(rig.writer_end.recv(1 << 21))    # says `taken` ...
    with open(tmp_path / "acc_129.log", "wb") as f:  # ... writes half a record, and dies
        f.write(b"INVITE|ft||a-0@kam")
    rig.writer = rig.new_writer()                    # its successor
    assert rig.writer.conn.repair_files() == [str(tmp_path / "acc_129.log")]
    assert (tmp_path / "acc_129.log").read_bytes() == b""
    rig.writer.tell_ingest(link.Message("hello", 1))
    answers = sender.answers(ingest)
    assert [a["line"] for a in answers[:-1]] == [1, 2, 3, 4, 5]
    assert all("the writer died" in a["error"] for a in answers[:-1])
    assert answers[-1] == {"done": True, "lines": 5, "written": 0, "errors": 5}


def test_a_report_that_never_comes_is_refused_at_the_end_of_the_stop(ingest_rig):
    rig, ingest, sender = ingest_rig
    ingest.grace = 0.2
    sender.sock.sendall(payload("a", 3))
    while not ingest.ledger.handed[rig.ingest.fileno()]:
        ingest.step(0.05)
    rig.writer.take(rig.writer_end.recv(1 << 21))    # taken, and the report is lost
    ingest.stopping = True
    ingest.stop()
    sender.sock.settimeout(2)
    answers = [json.loads(line) for line in sender.sock.makefile("rb")]
    assert [a["line"] for a in answers[:-1]] == [1, 2, 3]
    assert all("before the writer reported" in a["error"] for a in answers[:-1])
    assert answers[-1] == {"stopping": True, "lines": 3, "written": 0, "errors": 3}


def test_a_sender_that_ended_before_a_stop_is_answered_done(ingest_rig):
    """The stop reads the sender's lines and its end itself; the turns of select() that
    follow still see the socket readable and must not read it again."""
    rig, ingest, sender = ingest_rig
    ingest.grace = 0.3
    sender.sock.sendall(payload("a", 3))
    sender.sock.shutdown(socket.SHUT_WR)
    ingest.stopping = True
    ingest.stop()                                    # the writer never reports
    sender.sock.settimeout(2)
    answers = [json.loads(line) for line in sender.sock.makefile("rb")]
    assert [a["line"] for a in answers[:-1]] == [1, 2, 3]
    assert answers[-1] == {"done": True, "lines": 3, "written": 0, "errors": 3}


# A sender's life through the table of kamflat.server.senders: events -> the state they
# end in and whether the final answer says `stopping`; None where an event does not apply.
SENDER_LIVES = [
    (["eof", "settled"], "done", False),
    (["long_line", "newline", "eof", "settled"], "done", False),
    (["long_line", "eof", "settled"], "done", False),      # the long line was the last
    (["cut", "settled"], "done", True),                    # a stop ended its reading
    (["long_line", "cut", "stop"], "done", True),
    (["stop"], "done", True),                              # a stop's grace ran out
    (["eof", "stop"], "done", False),                      # it had ended by itself
    (["eof", "long_line"], None, None),                    # nothing is read after the end
    (["newline"], None, None),
    (["eof", "settled", "stop"], None, None),              # one final answer
]


@pytest.mark.parametrize("events, state, stopping", SENDER_LIVES)
def test_a_senders_life_follows_the_state_table(events, state, stopping):
    from kamflat.server.senders import Sender as IngestSender
    a, b = socket.socketpair()
    with a, b:
        sender = IngestSender(1, a)
        if state is None:
            with pytest.raises(RuntimeError, match="cannot take"):
                for event in events:
                    sender.goto(event)
            return
        for event in events[:-1]:
            sender.goto(event)
        assert sender.stopping == stopping           # what the final answer says
        assert sender.goto(events[-1]) == state and not sender.reading
