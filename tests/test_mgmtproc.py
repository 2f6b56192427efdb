"""The management loop (kamflat.server.mgmtproc.serve_all) in this process, no fork:
the real MI FIFO, JSON-RPC FIFO and ctl servers behind it, driven over their FIFOs and
socket; a transport that cannot open, and one that stops by itself."""
import json
import os
import socket
import threading

from conftest import wait_until
from test_jsonrpc_fifo import hang_rotation
from kamflat.mgmt.manage import Management
from kamflat.proto import binrpc
from kamflat.server.ctl import CtlServer
from kamflat.server.jsonrpc_fifo import JsonRpcFifoServer
from kamflat.server.mgmtproc import serve_all
from kamflat.server.mi_fifo import MIFifoServer
from kamflat.tools.fifoclient import exchange

TAG = "kfmg%d" % os.getpid()


class Loop:
    """serve_all(servers) on a thread; `ready` is what it said on its ready pipe."""

    def __init__(self, servers, check_every=1.0):
        self.stop = threading.Event()
        self.status = None
        read_fd, write_fd = os.pipe()
        self.thread = threading.Thread(target=self._run, args=(servers, write_fd, check_every),
                                       daemon=True)
        self.thread.start()
        self.ready = os.read(read_fd, 4096).decode()
        os.close(read_fd)

    def _run(self, servers, write_fd, check_every):
        try:
            self.status = serve_all(servers, self.stop, write_fd, check_every)
        finally:
            os.close(write_fd)

    def finish(self):
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive()
        return self.status


def transports(tmp_path, management):
    return [MIFifoServer(str(tmp_path / "mi.fifo"), management=management),
            JsonRpcFifoServer(str(tmp_path / "rpc.fifo"), management=management),
            CtlServer("unixs:%s" % (tmp_path / "ctl"), management=management)]


def ask_all(tmp_path):
    mi = exchange(str(tmp_path / "mi.fifo"), b":version:%s_mi\n\n" % TAG.encode(),
                  "/tmp/%s_mi" % TAG, 5)
    assert mi.startswith(b"200 OK\nServer:: ")
    rpc = exchange(str(tmp_path / "rpc.fifo"),
                   b'{"jsonrpc": "2.0", "method": "core.version", "reply_name": "%s_rpc", '
                   b'"id": 3}\n' % TAG.encode(), "/tmp/%s_rpc" % TAG, 5)
    assert json.loads(rpc)["result"].startswith("kamailio 5.6.3")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(tmp_path / "ctl"))
        sock.sendall(binrpc.encode_packet(binrpc.REQUEST, 4,
                                          binrpc.encode_body(["core.version"])))
        reader = binrpc.PacketReader()
        while (packet := reader.next_event()) is binrpc.NEED_DATA:
            reader.receive_data(sock.recv(4096))
    assert binrpc.decode_body(packet.body)[0].startswith("kamailio 5.6.3")


def test_serves_every_transport_until_stopped(tmp_path):
    loop = Loop(transports(tmp_path, Management.standalone()))
    assert loop.ready == "ok"
    ask_all(tmp_path)
    assert loop.finish() == 0
    assert sorted(os.listdir(tmp_path)) == []       # FIFOs and socket removed


def test_a_transport_that_cannot_open_stops_it_and_closes_the_others(tmp_path):
    (tmp_path / "rpc.fifo").write_text("a regular file, not a FIFO")
    loop = Loop(transports(tmp_path, Management.standalone()))
    assert loop.ready.startswith("error: ") and "rpc.fifo" in loop.ready
    loop.thread.join(10)
    assert loop.status == 1
    assert not (tmp_path / "mi.fifo").exists()      # the MI FIFO opened first: closed again


class StopsByItself:
    """A transport whose serve() returns at once, as one would after a bug."""

    opened = closed = False

    def open(self):
        self.opened = True

    def serve(self, stop):
        return

    def close(self):
        self.closed = True


def test_a_transport_that_stops_restarts_the_process(tmp_path, caplog):
    quitter = StopsByItself()
    loop = Loop(transports(tmp_path, Management.standalone()) + [quitter], check_every=0.05)
    assert loop.ready == "ok"
    wait_until(lambda: not loop.thread.is_alive(), timeout=10, what="serve_all to return")
    assert loop.status == 1 and quitter.closed
    assert "stopped unexpectedly" in caplog.text
    assert not (tmp_path / "mi.fifo").exists() and not (tmp_path / "ctl").exists()


def test_a_slow_command_on_one_transport_holds_up_no_other(tmp_path):
    management = Management.standalone()
    management.rotations = 0
    started, release = hang_rotation(management, most=10)
    loop = Loop(transports(tmp_path, management))
    try:
        reply = {}
        slow = threading.Thread(target=lambda: reply.setdefault("mi", exchange(
            str(tmp_path / "mi.fifo"), b":flat_rotate:%s_slow\n\n" % TAG.encode(),
            "/tmp/%s_slow" % TAG, 10)))
        slow.start()
        assert started.wait(5)
        ask_all(tmp_path)               # every transport answers while the rotation hangs
        release.set()
        slow.join(10)
        assert reply["mi"] == b"200 OK\n\n"
    finally:
        release.set()
        assert loop.finish() == 0
