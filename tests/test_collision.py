"""Two instances do not collide: a second `kamflat serve` on a live server's FIFO or
socket stops with one line and leaves the first alone; a dead server's files are replaced.
Real servers, real paths."""
import json
import os
import signal
import socket

import pytest

from conftest import run_kamflat, wait_until
from serverutil import Server, statistic
from kamflat.client import send
from kamflat.server.paths import live_holder


def record(i):
    return json.dumps({"table": "acc", "values": ["INVITE", "f", "t", "c-%d" % i, 200, "OK", 1]})


def second_config(tmp_path, first, **same):
    """A config of its own (acc dir, FIFO, socket) except for the paths in `same`."""
    other = Server(tmp_path / "second")
    text = other.config.read_text()
    for name, path in same.items():
        text = text.replace(str(getattr(other, name)), str(path))
    other.config.write_text(text)
    return other.config


@pytest.mark.parametrize("shared, statement, holder", [
    ("ingest", 'modparam("kamflat", "ingest_socket", ...)', "a server accepts connections on it"),
    ("fifo", 'modparam("mi_fifo", "fifo_name", ...)', "a server reads it"),
])
def test_a_second_server_on_a_live_path_stops_and_the_first_keeps_working(
        tmp_path, shared, statement, holder):
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    with Server(tmp_path / "first") as first:
        path = getattr(first, shared)
        config = second_config(tmp_path, first, **{shared: path})
        line = [n for n, text in enumerate(config.read_text().splitlines(), 1)
                if text.startswith(statement.split("...")[0])][-1]
        second = run_kamflat("serve", "-f", config)
        assert (second.returncode, second.stderr) == (1, (
            "kamflat: cannot start: %s:%d: %s: %s is in use: %s; stop that server or give "
            "this one another path\n" % (config, line, statement, path, holder)))
        assert path.exists()
        assert send(str(first.ingest), [record(i) for i in range(5)]).written == 5
        assert statistic(first.mi("get_statistics", "flatstore:"), "flatstore:acc_written") == 5


def test_files_left_by_a_killed_server_are_replaced(tmp_path):
    server = Server(tmp_path)
    server.start()
    os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait(10)
    # SIGKILL'd processes let go of their descriptors as they exit, one by one
    wait_until(lambda: live_holder(str(server.fifo)) is None and
               live_holder(str(server.ingest)) is None, 10, what="the FIFO and socket to be stale")
    assert server.ingest.exists() and server.fifo.exists()          # left behind, dead
    with Server(tmp_path) as again:
        assert send(str(again.ingest), [record(1)]).written == 1


def test_live_holder_of_each_kind(tmp_path):
    stream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    datagram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        stream.bind(str(tmp_path / "s"))
        stream.listen(1)
        datagram.bind(str(tmp_path / "d"))
        assert live_holder(str(tmp_path / "s")) == "a server accepts connections on it"
        assert live_holder(str(tmp_path / "d")) == "a server accepts connections on it"
    finally:
        stream.close()
        datagram.close()
    assert live_holder(str(tmp_path / "s")) is None          # closed: stale
    os.mkfifo(tmp_path / "f")
    assert live_holder(str(tmp_path / "f")) is None           # no reader
    reader = os.open(tmp_path / "f", os.O_RDONLY | os.O_NONBLOCK)
    try:
        assert live_holder(str(tmp_path / "f")) == "a server reads it"
    finally:
        os.close(reader)
    (tmp_path / "plain").write_text("x")
    assert live_holder(str(tmp_path / "plain")) is None
    assert live_holder(str(tmp_path / "absent")) is None


def test_the_ctl_socket_and_the_jsonrpc_fifo_are_checked_too(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    extra = ('rundir="%s"\nloadmodule "jsonrpcs.so"\nloadmodule "ctl.so"\n'
             'modparam("ctl", "binrpc", "unix:%s/ctl.sock")\n' % (run, run))
    (tmp_path / "first").mkdir()
    with Server(tmp_path / "first", extra=extra) as first:
        wait_until(lambda: live_holder(str(run / "kamailio_rpc.fifo")) and
                   live_holder(str(run / "ctl.sock")), 10, what="the JSON-RPC FIFO and ctl")
        for shared in ("jsonrpcs", "ctl"):
            (tmp_path / shared).mkdir()
            other = Server(tmp_path / shared, extra=extra)
            text = other.config.read_text()
            if shared == "ctl":        # its own JSON-RPC FIFO, the first's ctl socket
                text = text.replace('loadmodule "jsonrpcs.so"\n', "")
            else:                      # its own ctl socket, the first's JSON-RPC FIFO
                text = text.replace("%s/ctl.sock" % run, "%s/ctl2.sock" % run)
            other.config.write_text(text)
            second = run_kamflat("serve", "-f", other.config)
            lines = text.splitlines()
            if shared == "ctl":
                line = lines.index('modparam("ctl", "binrpc", "unix:%s/ctl.sock")' % run) + 1
                expected = ('%s:%d: modparam("ctl", "binrpc", "unix:%s/ctl.sock"): %s/ctl.sock '
                            'is in use: a server accepts connections on it'
                            % (other.config, line, run, run))
            else:
                line = lines.index('loadmodule "jsonrpcs.so"') + 1
                expected = ('%s:%d: loadmodule "jsonrpcs.so": %s/kamailio_rpc.fifo is in use: '
                            'a server reads it' % (other.config, line, run))
            assert (second.returncode, second.stderr) == (1, "kamflat: cannot start: %s; stop "
                                                          "that server or give this one "
                                                          "another path\n" % expected)
        assert send(str(first.ingest), [record(1)]).written == 1
        assert live_holder(str(run / "ctl.sock")) and live_holder(str(run / "kamailio_rpc.fifo"))
