"""A rotation asked for over a FIFO server is made in the server's own loop: the loop
tells every writer, reads their answers as they come and replies once all answered
(or the rotation's time limit ran out), serving everyone else meanwhile, without a
helper thread. Only a rotation asked for while another one is under way waits, on the
helper thread, for that one.

The writers are real `Writer`s on socketpairs (test_link_processes.Link) or a writer end
answered by a thread when the test says so; the servers are real, in threads.
"""
import contextlib
import json
import threading

from conftest import wait_until
from test_jsonrpc_fifo import HeldWriter, ReplyFifo, Server as RpcServer, install, request
from test_link_processes import Link, wait_readable
from test_mi_fifo import TAG, Running
from kamflat.mgmt.manage import Management
from kamflat.server.rotation import Rotator
from kamflat.tools.fifoclient import exchange, write_request


@contextlib.contextmanager
def held_mi(tmp_path, rank=1, timeout=10):
    """An MI FIFO server (test_mi_fifo.Running) rotating with one HeldWriter of `rank`
    and `timeout` s: (server, writer, rotator); both closed after."""
    srv, writer = Running(tmp_path), HeldWriter()
    rotator = Rotator({rank: writer.ours}, timeout, srv.management.statistics)
    install(srv.management, rotator)
    try:
        yield srv, writer, rotator
    finally:
        srv.close()
        writer.close()


def slow_threads():
    """The FIFO servers' helper threads alive now (other tests' may be among them)."""
    return {t for t in threading.enumerate() if t.name.endswith("fifo-slow")}


def test_mi_rotation_waits_for_the_writer_and_holds_up_nobody(tmp_path):
    name = TAG + "_rot"
    reply = {}
    before = slow_threads()
    with held_mi(tmp_path) as (srv, writer, _):
        asking = threading.Thread(target=lambda: reply.setdefault("rot", exchange(
            srv.path, b":flat_rotate:%s\n\n" % name.encode(), "/tmp/" + name, 10)))
        try:
            asking.start()
            number = writer.receive()
            # the rotation waits for its writer: everyone else is answered meanwhile
            assert srv.ask(b":pwd:%s_pwd\n\n" % TAG.encode(), TAG + "_pwd").startswith(
                b"200 OK\n")
            assert "rot" not in reply
            writer.answer(number)
            asking.join(10)
            assert reply["rot"] == b"200 OK\n\n"
            assert slow_threads() <= before      # no helper thread was needed
        finally:
            asking.join(10)


def test_mi_rotation_a_writer_does_not_answer_in_time(tmp_path):
    name = TAG + "_late"
    with held_mi(tmp_path, rank=3, timeout=0.2) as (srv, writer, _):
        assert srv.ask(b":flat_rotate:%s\n\n" % name.encode(), name, 10) == \
            b"500 Rotation incomplete\nwriter 3 did not close its files within 200 ms\n\n"
        late = writer.receive()
        writer.answer(late)                  # too late: not taken for the next rotation's
        answering = threading.Thread(target=lambda: writer.answer(writer.receive()))
        answering.start()
        try:
            assert srv.ask(b":flat_rotate:%s\n\n" % name.encode(), name, 10) == b"200 OK\n\n"
        finally:
            answering.join(10)
        assert writer.told == [1, 2]


def test_a_garbled_answer_is_that_writers_error_and_the_loop_goes_on(tmp_path):
    name = TAG + "_garbled"
    with held_mi(tmp_path, rank=2) as (srv, writer, _):
        answering = threading.Thread(target=lambda: (writer.receive(), writer.theirs.send(b"?")))
        answering.start()
        try:
            assert srv.ask(b":flat_rotate:%s\n\n" % name.encode(), name, 10) == (
                b"500 Rotation incomplete\nwriter 2: link packet of 1 bytes, shorter than its "
                b"header\n\n")
        finally:
            answering.join(10)
        assert srv.ask(b":pwd:%s\n\n" % name.encode(), name).startswith(b"200 OK\n")


def test_a_second_rotation_waits_for_the_first(tmp_path):
    """Two clients rotate at once: the second one's rotation begins once the first is
    over (on the helper thread, which waits for it); both are told 200."""
    replies = {}
    before = slow_threads()
    with held_mi(tmp_path) as (srv, writer, _):
        askers = [threading.Thread(target=lambda n=n: replies.setdefault(n, exchange(
            srv.path, b":flat_rotate:%s_%d\n\n" % (TAG.encode(), n), "/tmp/%s_%d" % (TAG, n),
            10))) for n in (1, 2)]
        try:
            askers[0].start()
            first = writer.receive()
            askers[1].start()
            wait_until(lambda: slow_threads() - before, timeout=5,
                       what="the second rotation to wait on the helper")
            writer.answer(first)
            second = writer.receive()            # begun only now
            assert second == first + 1
            writer.answer(second)
            for asker in askers:
                asker.join(10)
            assert replies == {1: b"200 OK\n\n", 2: b"200 OK\n\n"}
        finally:
            for asker in askers:
                if asker.ident is not None:
                    asker.join(10)


def test_stopping_during_a_rotation_lets_the_next_one_begin(tmp_path):
    name = TAG + "_stop"
    fifo = ReplyFifo(name)
    try:
        with held_mi(tmp_path) as (srv, writer, rotator):
            write_request(srv.path, b":flat_rotate:%s\n\n" % name.encode(), 2)
            writer.receive()
            srv.close()                          # mid-rotation
            assert rotator.lock.acquire(timeout=5)   # the rotation let go of it
            rotator.lock.release()
    finally:
        fifo.close()


def test_jsonrpc_rotation_closes_a_real_writers_files(tmp_path):
    acc = tmp_path / "acc"
    acc.mkdir()
    rig = Link(acc)
    rig.hand(1, "before", 3)
    rig.writer.step()
    (acc / "acc_129.log").rename(acc / "acc_129.log.1")      # what logrotate does
    srv = RpcServer(tmp_path / "rpc.fifo")
    install(srv.management, Rotator({1: rig.control}, 10, srv.management.statistics))
    reply = ReplyFifo("kfrot" + TAG)
    answering = threading.Thread(target=lambda: (wait_readable(rig.writer_control),
                                                 rig.writer.on_control()))
    try:
        answering.start()
        srv.send(request("flatstore.rotate", "kfrot" + TAG, 7))
        assert json.loads(reply.read_reply()) == {"jsonrpc": "2.0", "result": {}, "id": 7}
        answering.join(10)
        rig.hand(2, "after", 2)              # into a new file: the old one was closed
        rig.writer.step()
        assert [len(path.read_bytes().splitlines()) for path in
                (acc / "acc_129.log.1", acc / "acc_129.log")] == [3, 2]
    finally:
        answering.join(10)
        reply.close()
        srv.close()


def test_standalone_rotation_needs_no_writer():
    management = Management.standalone()
    rotation = management.begin_rotation()
    assert rotation.done and rotation.finish() == []
    assert management.rotate() == []


def test_requests_queued_behind_a_rotation_at_shutdown_are_counted_dropped(tmp_path):
    """The rotation (on the helper: a stand-in rotate() that waits) ends during the
    stop; the two requests queued behind it for the same reply FIFO are dropped, and
    counted as dropped, not forgotten."""
    srv = Running(tmp_path)
    started, release = threading.Event(), threading.Event()
    srv.management.rotate = lambda: (started.set(), release.wait(10), [])[2]
    srv.management.begin_rotation = None
    name = TAG + "_queued"
    fifo = ReplyFifo(name)
    releasing = threading.Timer(0.2, release.set)
    try:
        write_request(srv.path, b":flat_rotate:%s\n\n:pwd:%s\n\n:pwd:%s\n\n"
                      % ((name.encode(),) * 3), 2)
        assert started.wait(5)
        releasing.start()               # while the stop waits for the rotation
        srv.close()
        assert fifo.read_reply() == b"200 OK\n\n"
        assert srv.management.statistics._values[("mi_fifo", "dropped")] == 2
        assert srv.logged("server shutting down")
    finally:
        release.set()
        releasing.join(5)
        fifo.close()
