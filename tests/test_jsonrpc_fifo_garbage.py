"""Issue 14 item 6: no client's garbage reaches the next client on the JSON-RPC FIFO.

A writer process writes one garbage shape into the server FIFO (or starts a request
and is killed with -9 in the middle of it); once the server has read it, the next
client's well-formed request must get exactly the reply it gets on a clean server,
within 1 s. The rules are kamflat.proto.jsonstream's.
"""
import fcntl
import os
import random
import signal
import struct
import subprocess
import sys
import termios
import time

import pytest

from conftest import wait_until
from test_jsonrpc_fifo import TAG, ReplyFifo, Server

GOOD_NAME = "kfgood" + TAG
# a core.echo carrying a token, so the reply can only be this request's own
GOOD = (b'{"jsonrpc": "2.0", "method": "core.echo", "params": ["resync-%s"], '
        b'"reply_name": "%s", "id": 4242}\n' % (TAG.encode(), GOOD_NAME.encode()))
GONE = b'"reply_name": "kfgone' + TAG.encode() + b'"'     # a client that went away

SHAPES = {
    "unterminated, no newline": b'{"jsonrpc": "2.0", "method": "core.version", ' + GONE
                                + b', "id": 3',
    "64 KiB of random bytes": random.Random(14).randbytes(65536),
    "1 MiB of {": b"{" * (1 << 20),
    "cut inside a string": b'{"jsonrpc": "2.0", "method": "core.ver',
    "cut where a value starts": b'{"jsonrpc": "2.0", ' + GONE + b', "params": [',
    "cut inside a '...' string": b"{'jsonrpc': '2.",
    "cut after a backslash": b'{"jsonrpc": "2.0", "params": ["C:\\',
    "oversize and cut": b'{"jsonrpc": "2.0", "params": ["' + b"y" * 200000,
    "closers and a batch cut": b'}}]]\n[{"jsonrpc": "2.0", ' + GONE,
    "64 KiB of zeros": b"\0" * 65536,
    "deep nesting": b'{"a": [' * 20000,
}

WRITER = """
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY)
data = sys.stdin.buffer.read()
view = memoryview(data)
while view:
    view = view[os.write(fd, view):]
if len(sys.argv) > 2:       # stay, holding the FIFO open, until killed
    sys.stdout.write("written\\n"); sys.stdout.flush(); time.sleep(60)
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("garbage") / "rpc.fifo")
    yield srv
    srv.close()


def unread_bytes(path):
    """Bytes written to the server FIFO that the server has not read yet."""
    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    try:
        return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0]
    finally:
        os.close(fd)


def good_reply(server):
    """Send GOOD as the next client does; (reply bytes, seconds until the reply)."""
    fifo = ReplyFifo(GOOD_NAME)
    try:
        sent = time.monotonic()
        server.send(GOOD)
        reply = fifo.read_reply(timeout=5.0)
        return reply, time.monotonic() - sent
    finally:
        fifo.close()


def write_garbage(server, data):
    writer = subprocess.run([sys.executable, "-c", WRITER, server.path], input=data,
                            timeout=60)
    assert writer.returncode == 0
    wait_until(lambda: unread_bytes(server.path) == 0, timeout=10, what="garbage read")


@pytest.fixture(scope="module")
def clean_reply(server):
    reply, _ = good_reply(server)
    assert b'"resync-' + TAG.encode() + b'"' in reply
    return reply


@pytest.mark.parametrize("shape", list(SHAPES))
def test_next_request_answered_after_garbage(server, clean_reply, shape):
    write_garbage(server, SHAPES[shape])
    reply, took = good_reply(server)
    assert reply == clean_reply
    assert took < 1.0


def test_next_request_answered_after_a_writer_killed_mid_document(server, clean_reply):
    half = GOOD[:GOOD.index(b"core.echo") + 5]      # `{"jsonrpc": "2.0", "method": "core.`
    writer = subprocess.Popen([sys.executable, "-c", WRITER, server.path, "stay"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        writer.stdin.write(half)
        writer.stdin.close()        # the writer reads all of stdin, writes it, then waits
        assert writer.stdout.readline() == b"written\n"
        wait_until(lambda: unread_bytes(server.path) == 0, timeout=10, what="half read")
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait(10)
    assert writer.returncode == -signal.SIGKILL
    reply, took = good_reply(server)
    assert reply == clean_reply
    assert took < 1.0


def test_garbage_glued_to_the_request_in_one_write(server, clean_reply):
    """The grammar rules (1, 2) need no write boundary: one write, garbage first."""
    for garbage in (SHAPES["unterminated, no newline"], SHAPES["cut inside a string"],
                    b"{" * 10000):
        fifo = ReplyFifo(GOOD_NAME)
        try:
            server.send(garbage + GOOD)
            assert fifo.read_reply(timeout=5.0) == clean_reply
        finally:
            fifo.close()
