"""The JSON-RPC FIFO server against the exchanges recorded from Kamailio 5.6.3.

A real server (threads of this process, real FIFOs) replays every recorded case in
order, each followed by the recorder's probe, like the recording was made. Where
Kamailio lost the stream, kamflat must still answer the probe; the cases where
kamflat deliberately answers differently are listed in DEVIATIONS.
"""
import base64
import json
import logging
import os
import re
import select
import shutil
import socket
import stat
import sys
import threading
import time

import pytest

from conftest import DATA, run_kamflat, wait_until
from kamflat.server.jsonrpc_fifo import JsonRpcFifoServer
from kamflat.proto import link
from kamflat.server.rotation import Rotator
from kamflat.mgmt.manage import Management, Process

RECORDING = json.loads((DATA / "jsonrpc_fifo_cases.json").read_text())
TAG = "".join("0123456789abcdefghijklmnopqrstuvwxyz"[os.getpid() // 36 ** i % 36]
              for i in range(5))

# kamflat's answer where Kamailio gave none (see kamflat/jsonrpc.py, "Resynchronisation")
DEVIATIONS = {
    "malformed_json_unclosed_object": {"error": -32600, "id": 15},
    "malformed_json_trailing_comma": {"error": -32700, "id": 16},
    "large_request_70k_echo": {"error": -32600, "id": 1},
    "doc_8191_bytes": {"error": -32600, "id": 1},
    "param_ending_in_escaped_backslash": {"result": ["C:\\"], "id": 1},
}
# what Kamailio logged and kamflat must log too (one clear line) when it drops a request
DROP_LOGS = {
    "jsonrpc_field_missing": "missing jsonrpc field",
    "reply_name_with_slash_subdir": "Forbidden reply fifo filename",
    "reply_name_dotdot": "Forbidden reply fifo filename",
    "reply_name_with_dot": "Forbidden reply fifo filename",
    "reply_name_with_backslash": "Forbidden reply fifo filename",
    "reply_name_is_regular_file": "is not a fifo",
    "reader_opens_600ms_late": "no client at",
}


def unique(name):
    """Same-length reply name carrying this process's id (lengths matter for limits)."""
    if any(ch in name for ch in "./\\"):
        return name           # refused before any file is touched
    return name[:len(name) - len(TAG)] + TAG


def personalise(request, name):
    old = json.dumps(name).encode()
    new = json.dumps(unique(name)).encode()
    return request.replace(b'"reply_name": ' + old, b'"reply_name": ' + new)


def make_management():
    m = Management.standalone(argv=["kamflat", "serve", "-f", "kamflat.cfg"])
    # MI's (Kamailio 3.3's) name for rank 0, as Management gives it: the RPC
    # methods must print 5.6's "main process - attendant"
    procs = [Process(0, os.getpid(), 0, "attendant"),
             Process(1, os.getpid(), 1, "udp receiver child=0 sock=127.0.0.1:5070")]
    m._processes = lambda: procs
    m.rotations = 0

    def rotate():
        m.rotations += 1
        return []
    m.rotate = rotate               # a stand-in: the servers run it on their helper thread
    m.begin_rotation = None
    for name in ("rcv_requests", "fwd_requests"):
        m.statistics.register("core", name)
    m.statistics.add("core", "rcv_requests", 3)
    m.statistics.register("shmem", "total_size")
    m.statistics.add("shmem", "total_size", 67108864)
    return m


class Server:
    def __init__(self, path, **kwargs):
        self.management = make_management()
        self.server = JsonRpcFifoServer(str(path), management=self.management, **kwargs)
        self.server.open()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.server.serve, args=(self.stop,), daemon=True)
        self.thread.start()
        self.path = str(path)

    def close(self):
        self.stop.set()
        self.thread.join(5)
        self.server.close()

    def send(self, data):
        fd = os.open(self.path, os.O_WRONLY)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)


@pytest.fixture
def server(tmp_path):
    srv = Server(tmp_path / "kamailio_rpc.fifo")
    yield srv
    srv.close()


class ReplyFifo:
    """A client's reply FIFO in /tmp (where kamctl puts it), read non-blocking."""

    def __init__(self, name, regular=False, reader=True):
        self.path = "/tmp/" + name
        self.fd = None
        if os.path.lexists(self.path):
            os.unlink(self.path)
        if regular:
            open(self.path, "wb").close()
        else:
            os.mkfifo(self.path, 0o600)
            if reader:
                self.open_reader()

    def open_reader(self):
        self.fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)

    def read_available(self):
        out = b""
        while self.fd is not None:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            out += chunk
        return out

    def read_reply(self, timeout=5.0):
        """Everything up to the server's close (EOF after data)."""
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.fd], [], [], 0.05)
            if ready:
                try:
                    chunk = os.read(self.fd, 65536)
                except BlockingIOError:     # woken by a writer's open or close, no bytes
                    continue
                if chunk:
                    out += chunk
                elif out:
                    return out
        pytest.fail("no reply on %s within %.1fs (got %r)" % (self.path, timeout, out))

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
        if os.path.lexists(self.path):
            os.unlink(self.path)


def probe(server):
    """The recorder's probe after every case: must always be answered."""
    req = RECORDING["probe"]["request_text"].encode()
    name = RECORDING["probe"]["reply_fifo"]
    fifo = ReplyFifo(unique(name))
    try:
        server.send(personalise(req, name))
        reply = json.loads(fifo.read_reply())
        assert reply["id"] == 999 and reply["result"].startswith("kamailio 5.6.3 ")
    finally:
        fifo.close()


def shape(value):
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__


def split_replies(data):
    return [json.loads(part) for part in data.replace(b"}{", b"}\x00{").split(b"\x00")]


def check_case(case, got):
    name = case["name"]
    if name in DEVIATIONS:
        want = DEVIATIONS[name]
        reply = json.loads(got)
        assert reply["id"] == want["id"]
        if "error" in want:
            assert reply["error"]["code"] == want["error"]
        else:
            assert reply["result"] == want["result"]
        return
    if case["expect"] == "no_reply":
        assert got == b""
        return
    recorded = base64.b64decode(case["reply_b64"])
    if case["compare"] == "exact":
        assert got == recorded
        return
    mine, theirs = split_replies(got), split_replies(recorded)
    assert [shape(r) for r in mine] == [shape(r) for r in theirs]
    if name == "stats.get_statistics_all":
        assert all(re.fullmatch(r"\w+:\w+ = \d+", line) for line in mine[0]["result"])
        assert "core:rcv_requests = 3" in mine[0]["result"]


def test_replay_recorded_cases(server, caplog):
    caplog.set_level(logging.INFO, logger="kamflat.proto.jsonrpc")
    for case in RECORDING["cases"]:
        caplog.clear()
        request = base64.b64decode(case["request_b64"])
        name = case["reply_fifo"]
        fifo = None
        if name is not None and not any(ch in name for ch in "/\\.") \
                and case["create_reply_fifo"]:
            request = personalise(request, name)
            delayed = case["reader_open_delay_s"] > 0
            fifo = ReplyFifo(unique(name), regular=case.get("reply_is_regular_file", False),
                             reader=not delayed)
        try:
            server.send(request)
            if fifo is not None and case["reader_open_delay_s"] > 0:
                time.sleep(case["reader_open_delay_s"])     # the late reader is the point
                fifo.open_reader()
            if case["expect"] == "reply" or case["name"] in DEVIATIONS:
                got = fifo.read_reply()
                # one reply per open of the reply FIFO: the reader may see EOF between
                # two replies (two_requests_one_write), so read as many as were recorded
                recorded = base64.b64decode(case.get("reply_b64") or b"")
                while got.count(b"}{") < recorded.count(b"}{"):
                    got += fifo.read_reply()
            else:
                probe(server)           # once the probe is answered, the case is done
                got = fifo.read_available() if fifo and fifo.fd is not None else b""
                if case.get("reply_is_regular_file"):
                    got = open(fifo.path, "rb").read()
            check_case(case, got)
            if case["name"] in DROP_LOGS:
                assert DROP_LOGS[case["name"]] in caplog.text, case["name"]
            probe(server)
        finally:
            if fifo is not None:
                fifo.close()
    assert server.management.rotations == 4     # rotate, k_rotate, kamctl's, extra param


def request(method, reply_name, ident=1, params=None):
    doc = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        doc["params"] = params
    doc.update(reply_name=reply_name, id=ident)
    return (json.dumps(doc) + "\n").encode()


def test_client_without_reader_does_not_hold_up_others(tmp_path):
    srv = Server(tmp_path / "rpc.fifo", reply_open_wait=3.0)
    slow = ReplyFifo("kfslow" + TAG, reader=False)
    fast = ReplyFifo("kffast" + TAG)
    try:
        srv.send(request("flatstore.rotate", "kfslow" + TAG, 1))
        srv.send(request("core.version", "kffast" + TAG, 2))
        assert json.loads(fast.read_reply())["id"] == 2
        # the slow client's command has not run: its reply FIFO was never open
        assert srv.management.rotations == 0
        slow.open_reader()
        assert json.loads(slow.read_reply()) == {"jsonrpc": "2.0", "result": {}, "id": 1}
        assert srv.management.rotations == 1
    finally:
        slow.close()
        fast.close()
        srv.close()


def test_reader_that_never_reads_is_given_up(tmp_path, caplog):
    srv = Server(tmp_path / "rpc.fifo", reply_write_timeout=0.3)
    for i in range(4000):
        srv.management.statistics.register("bulk", "counter_number_%05d" % i)
    stuck = ReplyFifo("kfstuck" + TAG)
    other = ReplyFifo("kfother" + TAG)
    try:
        srv.send(request("stats.get_statistics", "kfstuck" + TAG, 1, ["all"]))
        srv.send(request("core.version", "kfother" + TAG, 2))
        assert json.loads(other.read_reply())["id"] == 2
        wait_until(lambda: "did not read it within" in caplog.text, timeout=5,
                   what="write give-up")
        probe(srv)
    finally:
        stuck.close()
        other.close()
        srv.close()


def test_unterminated_document_is_abandoned_when_idle(tmp_path, caplog):
    srv = Server(tmp_path / "rpc.fifo", request_idle_timeout=0.2)
    fifo = ReplyFifo("kfidle" + TAG)
    try:
        srv.send(b'{"jsonrpc": "2.0", "method": "core.version", "reply_name": "kfidle'
                 + TAG.encode() + b'", "id": 3')
        reply = json.loads(fifo.read_reply())
        assert (reply["error"]["code"], reply["id"]) == (-32600, 3)
        assert "abandoned after 0.2 s" in caplog.text
        probe(srv)
    finally:
        fifo.close()
        srv.close()


def test_garbage_and_batch_do_not_eat_the_next_request(server):
    fifo = ReplyFifo("kfgarb" + TAG)
    try:
        server.send(b"hello\n[" + request("core.version", "nobody", 5).strip() + b"]\n"
                    + request("core.version", "kfgarb" + TAG, 6))
        replies = []
        wait_until(lambda: replies.append(fifo.read_available()) or
                   b'"id":\t6' in b"".join(replies), timeout=5, what="reply to id 6")
        probe(server)
    finally:
        fifo.close()


@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
def test_reply_fifo_must_not_be_a_link(server, caplog, kind):
    target = ReplyFifo("kftarget" + TAG)
    link = "/tmp/kflink" + TAG
    try:
        (os.symlink if kind == "symlink" else os.link)(target.path, link)
        server.send(request("core.version", "kflink" + TAG, 1))
        probe(server)
        assert target.read_available() == b""
        assert ("soft link" if kind == "symlink" else "hard-linked") in caplog.text
    finally:
        if os.path.lexists(link):
            os.unlink(link)
        target.close()


def test_open_replaces_a_stale_fifo_and_close_removes_it(tmp_path):
    path = tmp_path / "rpc.fifo"
    os.mkfifo(path)
    srv = Server(path, fifo_mode=0o600)
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    srv.close()
    assert not path.exists()
    path.write_text("not a fifo")
    with pytest.raises(OSError, match="rpc.fifo"):
        JsonRpcFifoServer(str(path), management=make_management()).open()



def test_close_leaves_a_fifo_that_is_not_its_own(tmp_path):
    path = tmp_path / "rpc.fifo"
    srv = Server(path)
    other = tmp_path / "other.fifo"
    os.mkfifo(other)
    os.rename(other, path)    # someone else's FIFO now (never a moment without one there)
    srv.close()
    assert os.path.exists(path)


@pytest.mark.parametrize("watch", ["inotify", "stat"])
@pytest.mark.parametrize("how", ["rm", "mv"])
def test_fifo_recreated_when_deleted(tmp_path, monkeypatch, how, watch):
    if watch == "inotify":
        pytest.importorskip("pyinotify", reason="pyinotify (with pyasyncore on 3.12+) not installed")
    else:       # as on a machine without pyinotify: `import pyinotify` fails
        monkeypatch.setitem(sys.modules, "pyinotify", None)
    path = str(tmp_path / "rpc.fifo")
    srv = Server(path)
    before = ReplyFifo("kfbefore" + TAG)
    try:
        assert srv.server.fifo.watch == watch
        # written just before the FIFO goes: answered whichever the server sees first
        srv.send(request("core.version", "kfbefore" + TAG, 7))
        os.unlink(path) if how == "rm" else os.rename(path, str(tmp_path / "moved"))
        wait_until(lambda: os.path.exists(path) and stat.S_ISFIFO(os.stat(path).st_mode),
                   timeout=2, what="FIFO recreated")
        assert json.loads(before.read_reply())["id"] == 7
        probe(srv)
    finally:
        before.close()
        srv.close()
    assert not os.path.exists(path)     # the recreated FIFO is the server's own: removed


@pytest.mark.parametrize("watch", ["inotify", "stat"])
def test_fifo_directory_deleted_and_made_again(tmp_path, monkeypatch, caplog, watch):
    """The directory goes (that kills an inotify watch) and comes back: the FIFO is
    made again, and the outage is logged once, not once per retry."""
    if watch == "inotify":
        pytest.importorskip("pyinotify", reason="pyinotify (with pyasyncore on 3.12+) not installed")
    else:
        monkeypatch.setitem(sys.modules, "pyinotify", None)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    path = str(run_dir / "rpc.fifo")
    srv = Server(path)
    try:
        assert srv.server.fifo.watch == watch
        caplog.set_level("WARNING")
        # moved away whole, then removed: a server quick to make the FIFO again in it
        # cannot keep the directory from going (os.unlink, then rmdir, raced with it)
        gone = tmp_path / "gone"
        os.rename(run_dir, gone)
        shutil.rmtree(gone)
        # The outage noticed (however busy the machine), then more turns without a
        # directory, each retrying: still one line.
        wait_until(lambda: any("cannot create" in r.getMessage() for r in caplog.records),
                   timeout=10, what="the missing directory noticed")
        time.sleep(0.5)
        run_dir.mkdir()
        wait_until(lambda: os.path.exists(path) and stat.S_ISFIFO(os.stat(path).st_mode),
                   timeout=10, what="FIFO recreated")
        probe(srv)
        cannot = [r for r in caplog.records if "cannot create" in r.getMessage()]
        assert len(cannot) == 1
        assert any("is back" in r.getMessage() for r in caplog.records)
    finally:
        srv.close()



class HeldWriter:
    """A writer's control socket that answers `rotate N` only when `answer()` is called
    (or never). The other end, `ours`, goes into the Rotator."""

    def __init__(self):
        self.ours, self.theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.told = []

    def receive(self, timeout=5.0):
        """Wait for the next `rotate N`; its number."""
        self.theirs.settimeout(timeout)
        message = link.decode(self.theirs.recv(4096))
        self.told.append(message.number)
        return message.number

    def answer(self, number):
        self.theirs.send(link.encode(link.Message("rotated", number)))

    def close(self):
        self.ours.close()
        self.theirs.close()


def install(management, rotator):
    """`management` rotates with `rotator`, in the FIFO servers' loops too."""
    management.rotate = rotator.rotate
    management.begin_rotation = lambda: rotator.begin(blocking=False)


def hang_rotation(management, most=1.0):
    """Give `management` a real rotator with one writer that is slow to answer: it takes
    each `rotate N` at once, then answers `rotated N` after `most` s, or once `release`
    is set (counting management.rotations then). Returns the (started, release) events;
    started is set when the writer has been told to rotate."""
    started, release = threading.Event(), threading.Event()
    writer = HeldWriter()

    def slow_writer():
        while True:
            try:
                number = writer.receive(most + 20)  # the thread ends once nothing more comes
            except OSError:
                writer.theirs.close()
                return
            started.set()
            release.wait(most)
            management.rotations += 1
            writer.answer(number)
    threading.Thread(target=slow_writer, daemon=True).start()
    install(management, Rotator({1: writer.ours}, most + 10, management.statistics))
    return started, release


def test_slow_rotation_does_not_hold_up_other_clients(tmp_path):
    srv = Server(tmp_path / "rpc.fifo")
    started, release = hang_rotation(srv.management)
    rot = ReplyFifo("kfrot" + TAG)
    ver = ReplyFifo("kfver" + TAG)
    try:
        srv.send(request("flatstore.rotate", "kfrot" + TAG, 1))
        assert started.wait(5)
        sent = time.monotonic()
        srv.send(request("core.version", "kfver" + TAG, 2))
        assert json.loads(ver.read_reply())["id"] == 2
        waited = time.monotonic() - sent
        assert srv.management.rotations == 0        # answered while the rotation hangs
        assert waited < 0.1
        release.set()
        assert json.loads(rot.read_reply()) == {"jsonrpc": "2.0", "result": {}, "id": 1}
        assert srv.management.rotations == 1
    finally:
        release.set()
        rot.close()
        ver.close()
        srv.close()



def test_reply_name_no_utf8_can_carry_does_not_hold_up_the_next_request(server, caplog):
    fifo = ReplyFifo("kfsur" + TAG)
    try:
        bad = b'{"jsonrpc": "2.0", "method": "core.version", "reply_name": "a\\ud800", "id": 1}\n'
        server.send(bad + request("core.version", "kfsur" + TAG, 2))
        assert json.loads(fifo.read_reply())["id"] == 2
        wait_until(lambda: "Forbidden reply fifo filename" in caplog.text, timeout=5,
                   what="the bad reply name to be refused")
        assert "unexpected error" not in caplog.text
    finally:
        fifo.close()


# -- kamflat rpc (the client)

def test_client_request_bytes_are_kamctls():
    from kamflat.tools.rpc import build_request
    assert build_request("flatstore.rotate", [], "kamailio_receiver_17058", 17058) == (
        b'{"jsonrpc": "2.0", "method": "flatstore.rotate", '
        b'"reply_name": "kamailio_receiver_17058", "id": 17058}\n')
    assert b'"params": ["abc", 12, "34", 5, 2.5]' in build_request(
        "core.echo", ["abc", "12", "s:34", "i:5", "2.5"], "r", 1)


def test_kamflat_rpc_cli(server, tmp_path):
    ok = run_kamflat("rpc", "--fifo", server.path, "flatstore.k_rotate")
    assert (ok.returncode, ok.stderr) == (0, "")
    assert re.fullmatch(r'\{\n\t"jsonrpc":\t"2\.0",\n\t"result":\t\{\n\t\},\n\t"id":\t\d+\n\}\n',
                        ok.stdout)
    assert server.management.rotations == 1
    echo = run_kamflat("rpc", "--fifo", server.path, "core.echo", "a b", "7", "s:8")
    assert json.loads(echo.stdout)["result"] == ["a b", "7", "8"]
    unknown = run_kamflat("rpc", "--fifo", server.path, "no.such.method")
    assert unknown.returncode == 1
    assert json.loads(unknown.stdout)["error"] == {"code": 500, "message": "Method Not Found"}
    missing = run_kamflat("rpc", "--fifo", str(tmp_path / "missing.fifo"), "core.version")
    assert missing.returncode == 3 and "missing.fifo" in missing.stderr
    unserved = tmp_path / "unserved.fifo"
    os.mkfifo(unserved)
    idle = run_kamflat("rpc", "--fifo", str(unserved), "core.version")
    assert idle.returncode == 3 and "nothing is reading" in idle.stderr


@pytest.mark.parametrize("fifo_name", ["ABS", "rpc.fifo"])
def test_kamflat_rpc_reads_the_fifo_from_the_config(server, tmp_path, fifo_name):
    pytest.importorskip("kamflat.config.cfg", reason="kamflat.config.cfg not merged yet")
    run_dir = os.path.dirname(server.path)
    name = server.path if fifo_name == "ABS" else os.path.basename(server.path)
    cfg = tmp_path / "kamailio.cfg"
    cfg.write_text('#!KAMAILIO\nrun_dir="%s"\nloadmodule "jsonrpcs.so"\n'
                   'modparam("jsonrpcs", "fifo_name", "%s")\n' % (run_dir, name))
    result = run_kamflat("rpc", "-f", cfg, "core.version")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["result"].startswith("kamailio 5.6.3 ")
    bad = tmp_path / "bad.cfg"
    bad.write_text('modparam("jsonrpcs", "fifo_mode", "text")\n')
    broken = run_kamflat("rpc", "-f", bad, "core.version")
    assert broken.returncode == 2 and "bad.cfg" in broken.stderr
