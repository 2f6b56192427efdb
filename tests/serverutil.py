"""A real `kamflat serve` in a temporary directory, for the end-to-end tests."""
import os
import select
import signal
import subprocess
import threading
import time
from pathlib import Path

from conftest import kamflat_argv, kamflat_env, wait_until

CONFIG = """#!KAMAILIO
children={children}
loadmodule "sl.so"
loadmodule "kex.so"
loadmodule "acc.so"
loadmodule "db_flatstore.so"
loadmodule "mi_fifo.so"
modparam("mi_fifo", "fifo_name", "{tmp}/kamflat_fifo")
modparam("acc", "db_url", "flatstore:{tmp}/acc")
modparam("db_flatstore", "flush", {flush})
modparam("kamflat", "ingest_socket", "{tmp}/ingest.sock")
{extra}
"""


class Server:
    """Starts `kamflat serve -f <generated config>`; stop() sends SIGTERM and reaps it."""

    def __init__(self, tmp, children=2, flush=1, extra=""):
        self.tmp = Path(tmp)
        self.acc = self.tmp / "acc"
        self.fifo = self.tmp / "kamflat_fifo"
        self.ingest = self.tmp / "ingest.sock"
        self.config = self.tmp / "kamflat.cfg"
        self.config.write_text(CONFIG.format(children=children, tmp=self.tmp, flush=flush,
                                             extra=extra))
        self.stderr = []
        self.proc = None
        self._replies = 0

    def start(self, timeout=20):
        self.proc = subprocess.Popen(kamflat_argv("serve", "-f", self.config),
                                     env=kamflat_env(), stderr=subprocess.PIPE, text=True)
        reader = threading.Thread(target=self._read_stderr, daemon=True)
        reader.start()
        wait_until(lambda: self.proc.poll() is not None or "kamflat ready" in self.log(),
                   timeout, what="kamflat serve to be ready")
        assert self.proc.poll() is None, "kamflat serve exited:\n" + self.log()
        return self

    def _read_stderr(self):
        for line in self.proc.stderr:
            self.stderr.append(line)

    def log(self):
        return "".join(self.stderr)

    def stop(self, timeout=60):
        if self.proc is None or self.proc.poll() is not None:
            return self.proc and self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("kamflat serve did not stop within %ss:\n%s"
                                 % (timeout, self.log()))

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def pids(self):
        """The pids of the master and all its children."""
        children = Path("/proc/%d/task/%d/children" % (self.proc.pid, self.proc.pid))
        return [self.proc.pid] + [int(p) for p in children.read_text().split()]

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

    def records(self, table="acc", pattern="{table}_*.log*"):
        """Every line in every file of the table (live and renamed), as bytes."""
        lines = []
        for path in sorted(self.acc.glob(pattern.format(table=table))):
            lines.extend(path.read_bytes().splitlines(keepends=True))
        return lines


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


def statistic(reply, name):
    """The value of `group:name` in a get_statistics reply (bytes or str)."""
    text = reply.decode() if isinstance(reply, bytes) else reply
    for line in text.splitlines():
        key, _, value = line.partition(" = ")
        if key.strip() == name:
            return int(value)
    raise AssertionError("no statistic %s in %r" % (name, text))


def _read_to_eof(fd, timeout):
    """Read a reply FIFO until the server closed it (EOF after at least one writer)."""
    data = b""
    deadline = time.monotonic() + timeout
    opened = False
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.05)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if chunk:
            data += chunk
            opened = True
        elif opened or data:
            return data
        else:
            # EOF before any writer: with O_NONBLOCK an unopened FIFO reads as EOF.
            time.sleep(0.002)
    raise AssertionError("no complete reply within %.1fs (got %r)" % (timeout, data))
