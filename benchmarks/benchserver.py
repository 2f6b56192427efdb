"""What the benchmarks share, from what a plain `pip install .` has.

BenchServer is the pytest plugin's KamflatServer (importable without pytest) plus what
the benchmarks look at: the processes (for their CPU), MI requests, the lines on disk.
Beside it, where the real Kamailio is and the configs it is run with (data files
kept with the tests, which run the same ones: the benchmarks import nothing from tests/).
"""
import os
import socket
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kamflat.pytest_plugin import KamflatServer  # noqa: E402
from kamflat.tools.fifoclient import exchange  # noqa: E402

KAMAILIO = "/usr/sbin/kamailio"                          # Debian's package kamailio
MODULES = "/usr/lib/x86_64-linux-gnu/kamailio/modules"
KAMAILIO_DATA = REPO / "tests" / "data"
SIP_CFG = KAMAILIO_DATA / "acc_sip" / "kamailio-5.6-reference.cfg"   # acc, flatstore
RPC_CFG = KAMAILIO_DATA / "kamailio-5.6-rpc.cfg"   # jsonrpcs and ctl: a string.Template


def free_port():
    """A UDP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BenchServer(KamflatServer):
    """`kamflat serve` in `tmp` with `children`, `flush` and `extra` config lines."""

    def __init__(self, tmp, children=2, flush=1, extra=""):
        super().__init__(tmp, children=children, flush=flush, extra_cfg=extra)
        self.acc = Path(self.acc_dir)
        self.ingest = Path(self.ingest_socket)
        self._replies = 0

    def start(self, timeout=20.0):
        super().start(timeout)
        return self

    @property
    def proc(self):
        return self.process

    def pids(self):
        """The pids of the master and all its children."""
        pid = self.process.pid
        children = Path("/proc/%d/task/%d/children" % (pid, pid))
        return [pid] + [int(p) for p in children.read_text().split()]

    def mi(self, command, *args):
        """One MI FIFO request; the raw reply bytes."""
        self._replies += 1
        name = "kf_bench_%d_%d" % (os.getpid(), self._replies)
        request = ":%s:%s\n%s\n" % (command, name, "".join(a + "\n" for a in args))
        return exchange(self.mi_fifo, request.encode(), "/tmp/" + name)

    def lines(self, table="acc"):
        """Every line in every file of the table (live and renamed), as bytes."""
        lines = []
        for path in sorted(self.acc.glob("%s_*.log*" % table)):
            lines.extend(path.read_bytes().splitlines(keepends=True))
        return lines
