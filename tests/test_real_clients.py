"""The real Debian `kamctl` (5.6) and `kamcmd` against kamflat's servers.

kamctl is pointed at kamflat's FIFO with a ~/.kamctlrc in a temporary HOME (never
/etc). Since kamflat's reply bytes equal Kamailio's (test_jsonrpc_fifo), what the
clients print is checked against what they print for those bytes.
"""
import os
import re
import shutil
import socket
import string
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import free_udp_port

from test_jsonrpc_fifo import hang_rotation, make_management
from kamflat.proto import binrpc
from kamflat.server.ctl import CtlServer, parse_address
from kamflat.server.jsonrpc_fifo import JsonRpcFifoServer
from kamflat.mgmt.rpc_commands import SERVER_VERSION

KAMCTL = shutil.which("kamctl") or ("/usr/sbin/kamctl" if os.path.exists("/usr/sbin/kamctl")
                                    else None)
KAMCMD = shutil.which("kamcmd") or ("/usr/sbin/kamcmd" if os.path.exists("/usr/sbin/kamcmd")
                                    else None)
needs_kamctl = pytest.mark.skipif(KAMCTL is None, reason="kamctl not installed "
                                  "(Debian package kamailio; .ci/run installs it)")
needs_kamcmd = pytest.mark.skipif(KAMCMD is None, reason="kamcmd not installed "
                                  "(Debian package kamailio; .ci/run installs it)")


def serve(server):
    server.open()
    stop = threading.Event()
    thread = threading.Thread(target=server.serve, args=(stop,), daemon=True)
    thread.start()

    def finish():
        stop.set()
        thread.join(5)
        server.close()
    return finish


@pytest.fixture
def rpc_fifo(tmp_path):
    """A JSON-RPC FIFO server and a HOME whose .kamctlrc points kamctl at it."""
    management = make_management()
    fifo = tmp_path / "kamailio_rpc.fifo"
    finish = serve(JsonRpcFifoServer(str(fifo), management=management))
    home = tmp_path / "home"
    home.mkdir()
    (home / ".kamctlrc").write_text('RPCFIFOPATH="%s"\n' % fifo)
    yield management, home
    finish()


def kamctl(home, *args):
    env = dict(os.environ, HOME=str(home))
    env.pop("KAMCTL_TEST", None)
    return subprocess.run([KAMCTL, *args], env=env, capture_output=True, text=True,
                          timeout=20, cwd=str(home))


# kamctl 5.6 prints the reply through its awk filter_json: two-space indentation
KAMCTL_ROTATE = re.compile(r'\{\n  "jsonrpc":  "2\.0",\n  "result": \{\n  \},\n'
                           r'  "id": \d+\n\}\n')
KAMCTL_VERSION = re.compile(r'\{\n  "jsonrpc":  "2\.0",\n  "result": '
                            r'"kamailio 5\.6\.3 \(\w+/linux\) ",\n  "id": \d+\n\}\n')


@needs_kamctl
@pytest.mark.parametrize("method", ["flatstore.k_rotate", "flatstore.rotate"])
def test_kamctl_rpc_rotate(rpc_fifo, method):
    management, home = rpc_fifo
    result = kamctl(home, "rpc", method)
    assert result.returncode == 0, result.stderr
    assert KAMCTL_ROTATE.fullmatch(result.stdout), result.stdout
    assert management.rotations == 1


@needs_kamctl
def test_kamctl_rpc_core_version(rpc_fifo):
    _management, home = rpc_fifo
    result = kamctl(home, "rpc", "core.version")
    assert result.returncode == 0, result.stderr
    assert KAMCTL_VERSION.fullmatch(result.stdout), result.stdout


@needs_kamctl
def test_kamctl_ps(rpc_fifo):
    _management, home = rpc_fifo
    result = kamctl(home, "ps")
    assert result.returncode == 0, result.stderr
    pid = os.getpid()
    expected = ('{\n  "jsonrpc":  "2.0",\n  "result": [\n'
                '    {\n      "IDX":  0,\n      "PID":  %d,\n'
                '      "DSC":  "main process - attendant"\n    }, {\n'
                '      "IDX":  1,\n      "PID":  %d,\n'
                '      "DSC":  "udp receiver child=0 sock=127.0.0.1:5070"\n    }\n'
                '  ],\n  "id": ID\n}\n' % (pid, pid))
    assert re.sub(r'"id": \d+', '"id": ID', result.stdout) == expected


@needs_kamctl
def test_kamctl_uptime(rpc_fifo):
    _management, home = rpc_fifo
    result = kamctl(home, "uptime")
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r'\{\n  "jsonrpc":  "2\.0",\n  "result": \{\n'
                        r'    "now":  "\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}",\n'
                        r'    "up_since": "\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}",\n'
                        r'    "uptime": \d+\n  \},\n  "id": \d+\n\}\n', result.stdout), \
        result.stdout


@needs_kamctl
def test_kamctl_missing_fifo_exits_2(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / ".kamctlrc").write_text('RPCFIFOPATH="%s"\n' % (tmp_path / "nothing.fifo"))
    result = kamctl(home, "rpc", "core.version")
    assert result.returncode == 2
    assert "Error opening Kamailio's FIFO" in result.stdout + result.stderr


@pytest.fixture(params=["unixs", "unix", "unixd", "tcp", "udp"])
def ctl(request, tmp_path):
    management = make_management()
    address = {"unixs": "unixs:%s/ctl" % tmp_path, "unix": "unix:%s/ctl" % tmp_path,
               "unixd": "unixd:%s/ctl" % tmp_path,
               "tcp": "tcp:127.0.0.1:0", "udp": "udp:127.0.0.1:0"}[request.param]
    server = CtlServer(address, management=management)
    finish = serve(server)
    yield management, server.address
    finish()


def kamcmd(address, *args):
    return subprocess.run([KAMCMD, "-s", address, *args], capture_output=True, text=True,
                          timeout=20)


@needs_kamcmd
@pytest.mark.parametrize("method", ["flatstore.rotate", "flatstore.k_rotate"])
def test_kamcmd_rotate(ctl, method):
    management, address = ctl
    result = kamcmd(address, method)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert management.rotations == 1


@pytest.mark.parametrize("user", ["no-such-user", ""])
def test_ctl_unknown_user_is_a_clear_error(tmp_path, user):
    server = CtlServer("unixs:%s/ctl" % tmp_path, management=make_management(), user=user)
    with pytest.raises(OSError, match="cannot open ctl socket unixs:%s/ctl: .*name not found"
                       % tmp_path):
        server.open()


def ctl_client(address, bind_to):
    """A socket of the address's kind, connected to the ctl server."""
    kind, target = parse_address(address)
    family = socket.AF_UNIX if kind in ("unix", "unixd") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM if kind in ("unix", "tcp")
                         else socket.SOCK_DGRAM)
    sock.settimeout(5)
    if kind == "unixd":
        sock.bind(str(bind_to))         # somewhere for the reply to go
    sock.connect(target)
    return sock


def ctl_reply(sock, reader=None):
    """The next whole binrpc packet from sock, as (type, values). Pass one reader
    for several replies on one connection (a read may bring more than one)."""
    reader = reader or binrpc.PacketReader()
    while (packet := reader.next_event()) is binrpc.NEED_DATA:
        data = sock.recv(65536)
        assert data, "connection closed before a whole reply"
        reader.receive_data(data)
    return packet.type, binrpc.decode_body(packet.body)


def test_ctl_slow_rotation_does_not_hold_up_other_clients(ctl, tmp_path):
    management, address = ctl
    started, release = hang_rotation(management)
    rot, ver = ctl_client(address, tmp_path / "rot"), ctl_client(address, tmp_path / "ver")
    try:
        rot.send(binrpc.encode_packet(binrpc.REQUEST, 1, binrpc.encode_body(["flatstore.rotate"])))
        if rot.type == socket.SOCK_STREAM:
            rot.shutdown(socket.SHUT_WR)    # a client that hangs up its side still gets it
        assert started.wait(5)
        sent = time.monotonic()
        ver.send(binrpc.encode_packet(binrpc.REQUEST, 2, binrpc.encode_body(["core.version"])))
        assert ctl_reply(ver) == (binrpc.REPLY, [SERVER_VERSION])
        waited = time.monotonic() - sent
        assert management.rotations == 0        # answered while the rotation hangs
        assert waited < 0.1
        release.set()
        assert ctl_reply(rot) == (binrpc.REPLY, [])
        assert management.rotations == 1
    finally:
        release.set()
        rot.close()
        ver.close()


def test_ctl_replies_on_one_connection_keep_their_order(tmp_path):
    management = make_management()
    hang_rotation(management, most=0.2)
    finish = serve(CtlServer("unixs:%s/ctl" % tmp_path, management=management))
    sock = ctl_client("unixs:%s/ctl" % tmp_path, None)
    try:
        sock.send(binrpc.encode_packet(binrpc.REQUEST, 1, binrpc.encode_body(["flatstore.rotate"]))
                  + binrpc.encode_packet(binrpc.REQUEST, 2, binrpc.encode_body(["core.version"])))
        reader = binrpc.PacketReader()
        assert ctl_reply(sock, reader) == (binrpc.REPLY, [])
        assert ctl_reply(sock, reader) == (binrpc.REPLY, [SERVER_VERSION])
    finally:
        sock.close()
        finish()


@needs_kamcmd
def test_kamcmd_ps(ctl):
    _management, address = ctl
    result = kamcmd(address, "ps")
    assert result.returncode == 0, result.stderr
    pid = os.getpid()
    assert result.stdout == ("%d\tmain process - attendant\n"
                             "%d\tudp receiver child=0 sock=127.0.0.1:5070\n" % (pid, pid))


@needs_kamcmd
def test_kamcmd_core_version(ctl):
    _management, address = ctl
    result = kamcmd(address, "core.version")
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"kamailio 5\.6\.3 \(\w+/linux\) \n", result.stdout), result.stdout


@needs_kamcmd
def test_kamcmd_unknown_method(ctl):
    _management, address = ctl
    result = kamcmd(address, "no.such.method")
    assert (result.returncode, result.stdout) == (
        0, "error: 500 - command no.such.method not found\n")


@needs_kamcmd
def test_kamcmd_structs_and_statistics(ctl):
    _management, address = ctl
    uptime = kamcmd(address, "core.uptime").stdout
    assert re.fullmatch(r"\{\n\tnow: .+\n\tup_since: .+\n\tuptime: \d+\n\}\n", uptime), uptime
    stats = kamcmd(address, "stats.get_statistics", "core:", "total_size").stdout
    assert stats == ("core:fwd_requests = 0\ncore:rcv_requests = 3\n"
                     "shmem:total_size = 67108864\n")
    assert kamcmd(address, "core.echo", "abc", "12", "s:34").stdout == "abc\n12\n34\n"
    listed = kamcmd(address, "system.listMethods").stdout.split("\n")
    assert {"core.psx", "core.psa", "flatstore.k_rotate", "stats.get_statistics"} <= set(listed)
    assert kamcmd(address, "system.methodHelp", "flatstore.k_rotate").stdout == \
        "Close and reopen flatrotate files during log rotation.\n"


# -- the same requests to a real Kamailio 5.6 and to kamflat: same answers

KAMAILIO = "/usr/sbin/kamailio"
MODULES = "/usr/lib/x86_64-linux-gnu/kamailio/modules"
needs_kamailio = pytest.mark.skipif(
    not (os.path.exists(KAMAILIO) and os.path.isdir(MODULES) and KAMCMD),
    reason="Kamailio 5.6 (Debian package kamailio) not installed")

# Kamailio's config, a string.Template (benchmarks/bench_rpc.py reads it too)
KAMAILIO_CFG = Path(__file__).parent / "data" / "kamailio-5.6-rpc.cfg"


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """(kamailio fifo, kamailio ctl, kamflat fifo, kamflat ctl) serving the same things."""
    from conftest import wait_until
    kdir = tmp_path_factory.mktemp("kamailio")
    cfg = kdir / "kamailio.cfg"
    cfg.write_text(string.Template(KAMAILIO_CFG.read_text()).substitute(
        port=free_udp_port(), dir=kdir, modules=MODULES))
    log = open(kdir / "kamailio.log", "w")
    proc = subprocess.Popen([KAMAILIO, "-DD", "-E", "-f", str(cfg)], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    fdir = tmp_path_factory.mktemp("kamflat")
    management = make_management()
    management.debug = 2
    management.shv.update(one=1, two="abc")
    finish_fifo = serve(JsonRpcFifoServer(str(fdir / "rpc.fifo"), management=management))
    finish_ctl = serve(CtlServer("unixs:%s/ctl" % fdir, management=management))
    try:
        wait_until(lambda: (kdir / "kamailio_ctl").exists() and
                   (kdir / "kamailio_rpc.fifo").exists() or proc.poll() is not None,
                   timeout=15, what="Kamailio to start")
        assert proc.poll() is None, (kdir / "kamailio.log").read_text()
        yield (str(kdir / "kamailio_rpc.fifo"), "unixs:%s/kamailio_ctl" % kdir,
               str(fdir / "rpc.fifo"), "unixs:%s/ctl" % fdir)
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(10)
        log.close()
        finish_fifo()
        finish_ctl()


KAMCMD_SAME = [
    ["core.echo", "a", "5", "2.5", "b"], ["core.echo", "2.5"], ["core.echo", "-3", "s:7"],
    ["no.such.method"], ["system.methodHelp"], ["system.methodHelp", "nosuch"],
    ["system.methodSignature"], ["stats.get_statistics"], ["stats.get_statistics", "nosuch"],
    ["stats.reset_statistics", "nosuch"], ["stats.clear_statistics"],
    ["pv.shvGet"], ["pv.shvGet", "one"], ["pv.shvGet", "nosuch"],
    ["pv.shvSet", "nosuch", "int", "1"], ["pv.shvSet", "x", "bad", "1"],
    ["pv.shvSet", "five", "int", "abc"], ["pv.shvSet", "two", "str", "hello"],
    ["pv.shvSet", "one", "int", "5"], ["pv.shvGet"],
    ["cfg.get", "core", "debug"], ["cfg.get", "core", "nosuch"],
    ["cfg.seti", "core", "debug", "3"], ["cfg.get", "core", "debug"],
    ["cfg.seti", "core", "debug", "2"],
]


@needs_kamailio
def test_kamcmd_same_output_as_kamailio(both):
    _kfifo, kctl, _ffifo, fctl = both
    methods = kamcmd(fctl, "system.listMethods").stdout.split()
    commands = KAMCMD_SAME + [["system.methodHelp", m] for m in methods]
    for args in commands:
        theirs, mine = kamcmd(kctl, *args), kamcmd(fctl, *args)
        assert (mine.returncode, mine.stdout, mine.stderr) == \
            (theirs.returncode, theirs.stdout, theirs.stderr), args


JSONRPC_SAME = [
    '{"jsonrpc": "2.0", "method": "core.echo", "params": ["x"], "reply_name": "R", "id": %s}'
    % ident for ident in ('1.5', '-7', 'null', '"s"', 'true', 'false', '[1]', '{"a": 1}',
                          '1e3', '2147483648', '0.000001')
] + [
    '{"jsonrpc": "2.0", "method": "core.echo", "reply_name": "R"}',
    '{"jsonrpc": "2.0", "reply_name": "R", "id": 3}',
    '{"jsonrpc": "2.0", "method": "nope", "reply_name": "R", "id": 3}',
    '{"jsonrpc": "2.0", "method": "core.echo", "params": {"b": "x", "a": 7}, '
    '"reply_name": "R", "id": 3}',
    '{"jsonrpc": "2.0", "method": "core.echo", "params": ["q\\"b\\\\c\\n\\t\\u0001/\\u00fc",'
    ' -3, 3.9, 0], "reply_name": "R", "id": 3}',
    '{"jsonrpc": "2.0", "method": "core.echo", "params": [true, "x"], "reply_name": "R"}',
    '{"jsonrpc": "2.0", "method": "core.echo", "params": "x", "reply_name": "R", "id": 1}',
    '{"Jsonrpc": "2.0", "METHOD": "core.echo", "params": ["a"], "Reply_Name": "R", "id": 1}',
    '{"jsonrpc": "2.0", "method": "stats.get_statistics", "params": ["nosuch"], '
    '"reply_name": "R", "id": 1}',
    '{"jsonrpc": "2.0", "method": "stats.clear_statistics", "reply_name": "R", "id": 1}',
    '{"jsonrpc": "2.0", "method": "pv.shvGet", "reply_name": "R", "id": 1}',
    '{"jsonrpc": "2.0", "method": "pv.shvGet", "params": ["two"], "reply_name": "R", "id": 1}',
    '{"jsonrpc": "2.0", "method": "pv.shvSet", "params": ["one", "int", "7"], '
    '"reply_name": "R", "id": 1}',
    '{"jsonrpc": "2.0", "method": "pv.shvGet", "params": ["one"], "reply_name": "R", "id": 1}',
    '{"jsonrpc": "2.0", "method": "cfg.get", "params": ["core", "debug"], "reply_name": "R"}',
    '{"jsonrpc": "2.0", "method": "system.methodHelp", "params": [5], "reply_name": "R"}',
    '{"jsonrpc": "2.0", "method": "flatstore.k_rotate", "params": [1, 2], "reply_name": "R"}',
    '{"jsonrpc": "2.0", "method": "core.echo", "params": ["raw\ttab\nline"], "reply_name": "R"}',
]


@needs_kamailio
def test_jsonrpc_same_replies_as_kamailio(both):
    from test_jsonrpc_fifo import TAG, ReplyFifo
    kfifo, _kctl, ffifo, _fctl = both
    name = "kfdiff" + TAG
    for text in JSONRPC_SAME:
        request = text.replace('"R"', '"%s"' % name).encode() + b"\n"
        replies = []
        for fifo in (kfifo, ffifo):
            reply = ReplyFifo(name)
            try:
                fd = os.open(fifo, os.O_WRONLY)
                os.write(fd, request)
                os.close(fd)
                replies.append(reply.read_reply())
            finally:
                reply.close()
        assert replies[1] == replies[0], text


# -- a rotation by each client moves the following records into new files

@pytest.mark.parametrize("client", ["kamctl", "kamcmd", "kamflat rpc"])
def test_rotation_by_each_client_reopens_the_files(tmp_path, client):
    flatstore = pytest.importorskip("kamflat.flatstore.connection", reason="kamflat.flatstore.connection not merged")
    if {"kamctl": KAMCTL, "kamcmd": KAMCMD}.get(client, True) is None:
        pytest.skip("%s not installed" % client)
    from conftest import run_kamflat
    counter = flatstore.RotationCounter()
    acc = tmp_path / "acc"
    acc.mkdir()
    writer = flatstore.connect("flatstore:%s" % acc, rank=1, rotation=counter)
    writer.use_table("acc")
    management = make_management()
    management.rotate = lambda: (counter.advance(), [])[1]
    fifo = tmp_path / "kamailio_rpc.fifo"
    finish_fifo = serve(JsonRpcFifoServer(str(fifo), management=management))
    ctl = CtlServer("unixs:%s/ctl" % tmp_path, management=management)
    finish_ctl = serve(ctl)
    try:
        writer.insert(None, ["INVITE", "before"])
        os.rename(acc / "acc_129.log", acc / "acc_129.log.1")     # what logrotate does
        if client == "kamctl":
            home = tmp_path / "home"
            home.mkdir()
            (home / ".kamctlrc").write_text('RPCFIFOPATH="%s"\n' % fifo)
            result = kamctl(home, "rpc", "flatstore.k_rotate")
        elif client == "kamcmd":
            result = kamcmd(ctl.address, "flatstore.rotate")
        else:
            result = run_kamflat("rpc", "--fifo", fifo, "flatstore.k_rotate")
        assert result.returncode == 0, result.stderr
        writer.insert(None, ["INVITE", "after"])
        assert (acc / "acc_129.log.1").read_text() == "INVITE|before\n"
        assert (acc / "acc_129.log").read_text() == "INVITE|after\n"
    finally:
        writer.close()
        finish_fifo()
        finish_ctl()
        counter.close()


def test_ctl_survives_running_out_of_descriptors(tmp_path, caplog):
    """accept() failing (EMFILE) pauses accepting; connected clients are still served."""
    import resource
    import socket
    management = make_management()
    # no descriptors kept in reserve: this test is about accept() itself failing
    server = CtlServer("unixs:%s/ctl" % tmp_path, management=management, fd_reserve=0)
    finish = serve(server)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held = []
    try:
        from kamflat.proto import binrpc
        request = binrpc.encode_packet(binrpc.REQUEST, 9, binrpc.encode_body(["core.version"]))
        first = socket.socket(socket.AF_UNIX)
        first.settimeout(5)
        first.connect(str(tmp_path / "ctl"))
        first.sendall(request)
        assert b"kamailio 5.6.3" in first.recv(4096)     # accepted: served from now on
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 8, hard))
        try:
            while True:
                sock = socket.socket(socket.AF_UNIX)
                held.append(sock)
                sock.connect(str(tmp_path / "ctl"))
        except OSError:
            pass        # this process is out of descriptors now, the server too
        from conftest import wait_until
        wait_until(lambda: "accept on" in caplog.text, timeout=5, what="accept() to fail")
        first.sendall(request)
        assert b"kamailio 5.6.3" in first.recv(4096)
    finally:
        for sock in held:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        first.close()
        finish()
