"""A real `kamflat serve` in a temporary directory, for the end-to-end tests.

It is the pytest plugin's KamflatServer (what users get) plus what these tests look
at beyond a user's needs: raw MI requests, the processes and the files they hold.
"""
import os
import select
import time
from pathlib import Path

from kamflat.pytest_plugin import KamflatServer


class Server(KamflatServer):
    """`kamflat serve` with `children`, `flush` and `extra` config lines; stop() sends
    SIGTERM, reaps it and returns its exit status."""

    def __init__(self, tmp, children=2, flush=1, extra=""):
        super().__init__(tmp, children=children, flush=flush, extra_cfg=extra)
        self.tmp = Path(tmp)
        self.acc = Path(self.acc_dir)
        self.fifo = Path(self.mi_fifo)
        self.ingest = Path(self.ingest_socket)
        self.config = Path(self.cfg_path)
        self.write_config()       # so a test can also run `kamflat serve -f` on it itself
        self._replies = 0

    def start(self, timeout=20.0):
        super().start(timeout)
        return self

    def stop(self, timeout=60.0):
        return super().stop(timeout)

    @property
    def proc(self):
        return self.process

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def pids(self):
        """The pids of the master and all its children."""
        pid = self.process.pid
        children = Path("/proc/%d/task/%d/children" % (pid, pid))
        return [pid] + [int(p) for p in children.read_text().split()]

    def open_files(self):
        """Every path any kamflat process holds open."""
        return [path for pid in self.pids() for path in open_files_of(pid)]

    def mi(self, command, *args, timeout=10.0):
        """One classic MI FIFO request, the way kamctl 3.x sends it; the raw reply bytes."""
        self._replies += 1
        name = "kf_test_%d_%d" % (os.getpid(), self._replies)
        reply_path = "/tmp/" + name
        os.mkfifo(reply_path, 0o600)
        try:
            rfd = os.open(reply_path, os.O_RDONLY | os.O_NONBLOCK)
            try:
                request = ":%s:%s\n%s\n" % (command, name, "".join(a + "\n" for a in args))
                wfd = os.open(self.fifo, os.O_WRONLY)
                os.write(wfd, request.encode())
                os.close(wfd)
                return _read_to_eof(rfd, timeout)
            finally:
                os.close(rfd)
        finally:
            os.unlink(reply_path)

    def lines(self, table="acc", pattern="{table}_*.log*"):
        """Every line in every file of the table (live and renamed), as bytes."""
        lines = []
        for path in sorted(self.acc.glob(pattern.format(table=table))):
            lines.extend(path.read_bytes().splitlines(keepends=True))
        return lines


def running(pid):
    """True while `pid` exists and is not a zombie (an orphan's zombie may stay unreaped)."""
    try:
        with open("/proc/%d/status" % pid) as status:
            return "zombie" not in status.read()
    except FileNotFoundError:
        return False


def open_files_of(pid):
    """The paths process `pid` holds open (a vanished process holds none)."""
    paths = []
    try:
        fds = list(Path("/proc/%d/fd" % pid).iterdir())
    except OSError:
        return paths
    for fd in fds:
        try:
            paths.append(os.readlink(fd))
        except OSError:
            pass
    return paths


def statistic(reply, name, default=None):
    """The value of `group:name` in a get_statistics reply (bytes or str); `default`
    when it is not there (yet: a counter exists from its first count on), else fail."""
    text = reply.decode() if isinstance(reply, bytes) else reply
    for line in text.splitlines():
        key, _, value = line.partition(" = ")
        if key.strip() == name:
            return int(value)
    if default is not None:
        return default
    raise AssertionError("no statistic %s in %r" % (name, text))


def _read_to_eof(fd, timeout):
    """Read a reply FIFO until the server closed it (EOF after at least one writer)."""
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.05)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:     # woken by a writer's open or close, no bytes yet
            continue
        if chunk:
            data += chunk
        elif data:
            return data
        else:
            # EOF before any writer: with O_NONBLOCK an unopened FIFO reads as EOF.
            time.sleep(0.002)
    raise AssertionError("no complete reply within %.1fs (got %r)" % (timeout, data))
