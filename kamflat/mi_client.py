"""`kamflat fifo`: the classic MI FIFO client, as `kamctl fifo` of Kamailio 3.x.

It sends the bytes kamctl 3.x sends (`:CMD:openser_receiver_<pid>\\nARG\\n...\\n\\n`
in one write, reply FIFO created beforehand) and prints the reply as kamctl
does (a first line starting `200 OK` and every empty line left out). Unlike
kamctl it exits 0 only on a 2xx reply, 1 on an error reply or a timeout, and 2
when the server FIFO is not there.
"""
import argparse
import errno
import os
import select
import sys
import time

from kamflat import mi

DEFAULT_FIFO = "/tmp/kamailio_fifo"     # kamctl's default FIFO_PATH
DEFAULT_REPLY_DIR = "/tmp/"


class ServerUnreachable(Exception):
    """Nothing is serving the MI FIFO at this path."""


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
        if e.errno in (errno.ENOENT, errno.ENXIO, errno.ENOTDIR):
            raise ServerUnreachable(server_fifo) from None
        raise
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
    """One MI exchange as kamctl does it: reply FIFO first, request, reply to EOF.

    The reply FIFO is removed afterwards. Returns the reply bytes.
    """
    fd = make_reply_fifo(reply_path)
    try:
        write_request(server_fifo, request, timeout)
        return read_reply(fd, timeout)
    finally:
        os.close(fd)
        os.unlink(reply_path)


def kamctl_output(reply):
    """What kamctl prints: without a first line starting `200 OK`, without empty lines."""
    lines = reply.split(b"\n")
    if lines and lines[0].startswith(b"200 OK"):
        lines = lines[1:]
    return b"".join(line + b"\n" for line in lines if line)


def reply_ok(reply):
    return reply[:1] == b"2" and reply[1:3].isdigit() and reply[3:4] == b" "


def fifo_from_config(path):
    """(fifo_name, reply_dir) of the mi_fifo module in a kamflat/Kamailio config."""
    from kamflat.config import load_config       # only needed with -f
    config = load_config(path)
    return (config.param("mi_fifo", "fifo_name"),
            config.param("mi_fifo", "reply_dir") or DEFAULT_REPLY_DIR)


def unreachable_hint(fifo):
    return ("** ERROR: Error opening Kamailio's FIFO %s\n"
            "** ERROR: Make sure you have the line 'modparam(\"mi_fifo\", \"fifo_name\", \"%s\")' "
            "in your config\n"
            "** ERROR: and also have loaded the mi_fifo module.\n" % (fifo, fifo))


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):
        """Usage errors exit 1 (as kamctl's), keeping 2 for "server unreachable"."""
        self.print_usage(sys.stderr)
        self.exit(1, "%s: error: %s\n" % (self.prog, message))


def parse_args(argv):
    parser = ArgumentParser(
        prog="kamflat fifo",
        description="Send one classic MI command over the MI FIFO (like `kamctl fifo`).")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("-f", dest="config", metavar="FILE",
                       help="config file: use its mi_fifo fifo_name and reply_dir")
    where.add_argument("--fifo", metavar="PATH",
                       help="server FIFO (default %s)" % DEFAULT_FIFO)
    parser.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                        help="how long to wait for the reply (default 10)")
    parser.add_argument("command", metavar="CMD")
    parser.add_argument("args", nargs="*", metavar="ARG")
    return parser.parse_args(argv)


def main(argv):
    opts = parse_args(argv)
    fifo, reply_dir = opts.fifo or DEFAULT_FIFO, DEFAULT_REPLY_DIR
    if opts.config:
        try:
            fifo, reply_dir = fifo_from_config(opts.config)
        except Exception as e:      # ConfigError and OSError say file and line themselves
            print("kamflat fifo: %s" % e, file=sys.stderr)
            return 1
        if not fifo:
            print("kamflat fifo: %s sets no modparam(\"mi_fifo\", \"fifo_name\", ...)" % opts.config,
                  file=sys.stderr)
            return 2
    for i, arg in enumerate([opts.command] + opts.args):
        if "\n" in arg:
            print("kamflat fifo: %s %d contains a newline, which the MI FIFO protocol cannot carry"
                  % ("argument" if i else "command", i), file=sys.stderr)
            return 1
    name = "openser_receiver_%d" % os.getpid()
    request = mi.encode_request(opts.command, name, opts.args)
    try:
        reply = exchange(fifo, request, reply_dir + name, opts.timeout)
    except ServerUnreachable:
        sys.stderr.write(unreachable_hint(fifo))
        return 2
    except NoReply as e:
        sys.stdout.buffer.write(kamctl_output(e.partial))
        print("kamflat fifo: %s from %s" % (e, fifo), file=sys.stderr)
        return 1
    sys.stdout.buffer.write(kamctl_output(reply))
    sys.stdout.flush()
    if not reply:       # the server closes without a word only for `kill`
        return 0 if opts.command == "kill" else 1
    return 0 if reply_ok(reply) else 1
