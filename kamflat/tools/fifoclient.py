"""The client side of Kamailio's FIFO protocols (MI and JSON-RPC alike): make a reply
FIFO, write the request into the server FIFO, read the reply until the server closes it.
"""
import errno
import os
import select
import time


class ServerUnreachable(Exception):
    """Nothing is serving the server FIFO at this path (the message says why)."""


class NoReply(Exception):
    """The server did not finish its reply in time (`partial` holds what came)."""

    def __init__(self, message, partial=b""):
        super().__init__(message)
        self.partial = partial


def make_reply_fifo(path):
    """mkfifo + chmod a+w, replacing a stale one of ours; open it for reading, non-blocking."""
    try:
        os.mkfifo(path, 0o600)
    except FileExistsError:
        os.unlink(path)
        os.mkfifo(path, 0o600)
    os.chmod(path, 0o622)
    return os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)


def write_request(server_fifo, request, timeout):
    """Write the whole request to the server FIFO (one write when it fits in the pipe)."""
    try:
        fd = os.open(server_fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ENXIO:
            raise ServerUnreachable("nothing is reading the FIFO %s (server not running?)"
                                    % server_fifo) from None
        raise ServerUnreachable("cannot open the FIFO %s: %s" % (server_fifo, e.strerror)) from None
    try:
        deadline = time.monotonic() + timeout
        view = memoryview(request)
        while view:
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                if not select.select([], [fd], [], max(0.0, deadline - time.monotonic()))[1]:
                    raise NoReply("the server FIFO %s stayed full for %.1f s" % (server_fifo, timeout))
    finally:
        os.close(fd)


def read_reply(fd, timeout):
    """Read the reply FIFO until the server closes it (EOF), or raise NoReply."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + timeout
    chunks = []
    while True:
        left = deadline - time.monotonic()
        # Linux reports POLLIN/POLLHUP on a FIFO only once a writer has come, so an
        # empty read after poll() is the server's close, not "no writer yet".
        if left <= 0 or not poller.poll(left * 1000):
            raise NoReply("no complete reply within %.1f s" % timeout, b"".join(chunks))
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            continue
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def exchange(server_fifo, request, reply_path, timeout=10.0):
    """One exchange as kamctl does it: reply FIFO first, request, reply to EOF.

    The reply FIFO is removed afterwards. Returns the reply bytes.
    """
    fd = make_reply_fifo(reply_path)
    try:
        write_request(server_fifo, request, timeout)
        return read_reply(fd, timeout)
    finally:
        os.close(fd)
        os.unlink(reply_path)
