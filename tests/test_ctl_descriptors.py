"""Issue 14 item 5, the ctl socket's part: running out of descriptors never stops the
management process nor starves the interfaces served beside it.

A real `kamflat serve` whose management process has its fd limit lowered to 300 gets
2,000 idle connections on its ctl socket; meanwhile MI, JSON-RPC and ctl clients are
answered, the process stays, and it never holds more connections than its cap.
"""
import json
import os
import resource
import select
import socket
import threading
import time

import pytest

from conftest import run_kamflat, wait_until
from serverutil import Server, open_files_of
from kamflat.proto import binrpc
from kamflat.server.ctl import FD_RESERVE, CtlServer
from kamflat.mgmt.manage import Management
from kamflat.tools.fifoclient import exchange

LIMIT = 300
VERSION = binrpc.encode_packet(binrpc.REQUEST, 7, binrpc.encode_body(["core.version"]))


def ask_ctl(path, timeout=10.0):
    """One binrpc core.version on a fresh connection; the reply's values."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(VERSION)
        reader = binrpc.PacketReader()
        while (packet := reader.next_event()) is binrpc.NEED_DATA:
            data = sock.recv(65536)
            assert data, "ctl closed the connection without a reply"
            reader.receive_data(data)
        return binrpc.decode_body(packet.body)


def connect_all(path, count, deadline):
    """`count` connections, retried while the listen backlog is full; the sockets."""
    socks, waiting = [], count
    while waiting and time.monotonic() < deadline:
        sock = socket.socket(socket.AF_UNIX)
        sock.setblocking(False)
        try:
            sock.connect(path)
        except BlockingIOError:         # backlog full: the server has not accepted yet
            sock.close()
            time.sleep(0.005)
            continue
        socks.append(sock)
        waiting -= 1
    return socks


def closed_by_server(socks):
    poller = select.poll()
    for sock in socks:
        poller.register(sock, select.POLLIN)
    return sum(1 for _fd, ev in poller.poll(0) if ev & (select.POLLIN | select.POLLHUP))


@pytest.fixture
def own_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))     # 2,000 sockets here
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_2000_idle_ctl_connections_starve_nobody(tmp_path, own_fd_limit):
    ctl_path = str(tmp_path / "ctl")
    rpc_fifo = str(tmp_path / "rpc.fifo")
    extra = ('loadmodule "jsonrpcs.so"\nloadmodule "ctl.so"\n'
             'modparam("jsonrpcs", "fifo_name", "%s")\nmodparam("ctl", "binrpc", "unixs:%s")\n'
             % (rpc_fifo, ctl_path))
    with Server(tmp_path, children=1, extra=extra) as server:
        wait_until(lambda: os.path.exists(ctl_path) and os.path.exists(rpc_fifo), timeout=10,
                   what="the ctl socket and the JSON-RPC FIFO")
        mgmt = next(pid for pid in server.pids() if server.mi_fifo in open_files_of(pid))
        resource.prlimit(mgmt, resource.RLIMIT_NOFILE, (LIMIT, LIMIT))
        assert ask_ctl(ctl_path)[0].startswith("kamailio 5.6.3")
        socks = connect_all(ctl_path, 2000, time.monotonic() + 60)
        try:
            assert len(socks) == 2000
            # every interface answers while the idle connections are there
            assert ask_ctl(ctl_path)[0].startswith("kamailio 5.6.3")
            # (poll-based client: this process holds descriptors above FD_SETSIZE now)
            mi = exchange(server.mi_fifo, b":version:kfdesc%d\n\n" % os.getpid(),
                          "/tmp/kfdesc%d" % os.getpid())
            assert mi.startswith(b"200 OK\n")
            rpc = run_kamflat("rpc", "--fifo", rpc_fifo, "core.version")
            assert rpc.returncode == 0, rpc.stderr
            assert json.loads(rpc.stdout)["result"].startswith("kamailio 5.6.3")
            # the server kept at most its cap open (the fd limit less the reserve)
            held = len(os.listdir("/proc/%d/fd" % mgmt))
            assert held < LIMIT
            closed = closed_by_server(socks)
            assert 2000 - closed <= LIMIT - FD_RESERVE
            print("2000 connections: %d closed by the server, %d fds held (limit %d)"
                  % (closed, held, LIMIT))
        finally:
            for sock in socks:
                sock.close()
        assert mgmt in server.pids()                # the same management process
        assert server.mi("version").startswith(b"200 OK\n")


@pytest.fixture
def serving(tmp_path):
    """Start a CtlServer(**options) in a thread of this process; stopped at the end."""
    running = []

    def start(**options):
        server = CtlServer("unixs:%s/ctl" % tmp_path, management=Management.standalone(),
                           **options)
        server.open()
        stop = threading.Event()
        thread = threading.Thread(target=server.serve, args=(stop,), daemon=True)
        thread.start()
        running.append((server, stop, thread))
        return server
    yield start
    for server, stop, thread in running:
        stop.set()
        thread.join(5)
        server.close()


def test_idle_connections_are_closed_after_the_idle_timeout(tmp_path, serving):
    server = serving(idle_timeout=0.3)
    try:
        idle = socket.socket(socket.AF_UNIX)
        idle.connect(str(tmp_path / "ctl"))
        idle.settimeout(5)
        started = time.monotonic()
        assert idle.recv(1) == b""                  # closed by the server
        assert time.monotonic() - started >= 0.3
        assert ask_ctl(str(tmp_path / "ctl"))[0].startswith("kamailio 5.6.3")
        wait_until(lambda: not server._clients, timeout=5, what="the clients gone")
    finally:
        idle.close()


def test_cap_closes_the_idlest_connection_to_make_room(tmp_path, serving):
    server = serving(max_connections=3)
    path = str(tmp_path / "ctl")
    try:
        first = socket.socket(socket.AF_UNIX)
        first.connect(path)
        first.settimeout(5)
        others = [socket.socket(socket.AF_UNIX) for _ in range(2)]
        for sock in others:
            sock.connect(path)
        wait_until(lambda: len(server._clients) == 3, timeout=5, what="3 connections")
        time.sleep(0.15)            # older than EVICT_IDLE (the point of the test)
        others[0].sendall(VERSION)  # active again: not the idlest any more
        others[0].settimeout(5)
        assert others[0].recv(4096)
        assert ask_ctl(path)[0].startswith("kamailio 5.6.3")      # room was made...
        assert first.recv(1) == b""                               # ...by closing the idlest
        assert len(server._clients) <= 3
    finally:
        first.close()
        for sock in others:
            sock.close()


def test_a_reply_waits_for_a_free_descriptor(tmp_path, own_fd_limit):
    """The FIFO servers' share: a reply FIFO that cannot be opened for want of a
    descriptor (EMFILE) is retried, like one without a reader yet, not dropped."""
    from test_mi_fifo import Running
    from kamflat.tools.fifoclient import make_reply_fifo, read_reply
    srv = Running(tmp_path)
    reply_path = "/tmp/kfnofd%d" % os.getpid()
    reply_fd = make_reply_fifo(reply_path)
    server_fd = os.open(srv.path, os.O_WRONLY)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        lowest_free = os.dup(0)
        os.close(lowest_free)
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))   # no open() works
        os.write(server_fd, b":version:kfnofd%d\n\n" % os.getpid())
        wait_until(lambda: srv.server.jobs._opening, timeout=5, what="the open to be retried")
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))          # a descriptor frees
        assert read_reply(reply_fd, 5).startswith(b"200 OK\nServer:: ")
        assert not srv.logged("dropped request")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        os.close(server_fd)
        os.close(reply_fd)
        os.unlink(reply_path)
        srv.close()
