"""What the management transports may ask of a running server.

The MI FIFO, the JSON-RPC FIFO and the binrpc ctl socket are three ways to reach the
same commands; each transport parses its own wire format and then calls one
`Management` object, so a command's behaviour is written once (here or in the
process layer behind it) and only its formatting differs per transport.

A Management lives in the management process. `kamflat serve` builds it with
the real process table, rotation and statistics of the running server; a
transport's own tests may build one with `Management.standalone()`, which is a
complete server with no writer processes (a rotation then has nobody to wait for).
"""
import os
import signal
import sys
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Process:
    """One row of `ps` / core.psx / core.psa."""

    idx: int      # position in the process table (Kamailio's ID / IDX)
    pid: int
    rank: int     # Kamailio rank: 0 main, 1..N writers, negative for helpers
    desc: str     # e.g. "attendant", "udp receiver child=0 sock=127.0.0.1:5060", "MI FIFO"


@dataclass(frozen=True)
class Stat:
    group: str
    name: str
    value: int


def select_statistics(stats, spec):
    """The counters one get/reset/clear_statistics argument names, as kex selects them.

    "all" -> every counter, "group:" -> that group's, anything else -> the first
    counter with that name. Kamailio walks its counters sorted by group, then name;
    so does this, and both MI and RPC print them in that order: core/counters.c keeps
    the groups in grp_sorted (grp_hash_add inserts by strcmp) and each group's counters
    in a list cnt_hash_add inserts by strcmp, which counter_iterate_grp_names and
    counter_iterate_grp_vars walk (3.3 lib/kcore and 5.6 kex stats alike). Python's
    str order is strcmp's for these ASCII names ("bad_URIs_rcvd" < "bad_msg_hdr").
    """
    if spec == "all":
        chosen = stats
    elif len(spec) > 1 and spec.endswith(":"):
        chosen = [s for s in stats if s.group == spec[:-1]]
    else:
        chosen = [s for s in stats if s.name == spec][:1]
    return sorted(chosen, key=lambda s: (s.group, s.name))


def stat_line(stat, old=None):
    """kex's "group:name = value"; clear_statistics adds " (old)" when it changed."""
    if old is not None and old != stat.value:
        return "%s:%s = %d (%d)" % (stat.group, stat.name, stat.value, old)
    return "%s:%s = %d" % (stat.group, stat.name, stat.value)


class Statistics:
    """Named counters in registration order, grouped like Kamailio's (`core:rcv_requests`).

    This in-process version is what `standalone()` uses; `kamflat serve` passes an
    object with the same three methods backed by shared memory.
    """

    def __init__(self):
        self._values = {}

    def register(self, group, name):
        self._values.setdefault((group, name), 0)

    def add(self, group, name, n=1):
        self._values[(group, name)] = self._values.get((group, name), 0) + n

    def snapshot(self):
        """All counters as a list of Stat, in registration order."""
        return [Stat(g, n, v) for (g, n), v in self._values.items()]

    def reset(self, group, name):
        """Set one counter to 0. Returns False if there is no such counter."""
        if (group, name) not in self._values:
            return False
        self._values[(group, name)] = 0
        return True


class Value:
    """A core value this process alone sees (standalone); `kamflat serve` passes the
    shared one of server/shm.py instead, so every process sees a change."""

    def __init__(self, value=0):
        self.value = value

    def get(self):
        return self.value

    def set(self, value):
        self.value = value


# Commands, by their MI and RPC names, that wait for other processes (a rotation waits
# for every writer): they hold up no other client. The FIFO servers begin a rotation
# with begin_rotation() and take its answers in their own loop; when another rotation
# is under way, and in the binrpc server, they run on a helper thread (fifoio.SlowCalls).
SLOW = frozenset(("flat_rotate", "flatstore.rotate", "flatstore.k_rotate"))


class Management:
    """The server as the management commands see it.

    `rotate()` makes every writer close its files (the next record of each opens new
    ones) and returns when every writer has closed the files it had open, or when the
    time limit ran out: a list of error strings, one per writer that did not answer or
    failed; an empty list means the rotation is complete. `begin_rotation()` begins the
    same without waiting: a `kamflat.server.rotation.Rotation`, or None when another
    rotation is under way (rotate() waits for that one first); None as the attribute
    itself means this server has no such thing (a test's stand-in for rotate()).
    """

    def __init__(self, *, argv, processes, rotate, statistics, stop, started=None, debug=0,
                 begin_rotation=None):
        self.argv = list(argv)
        self.started = time.time() if started is None else started
        # core.debug / MI `debug`: Kamailio's log level, an int or a Value-like get()/set()
        self._debug = debug if hasattr(debug, "get") else Value(debug)
        self.shv = {}               # pv shared variables: name -> int or str
        self.statistics = statistics
        self._processes = processes
        self.rotate = rotate
        self.begin_rotation = begin_rotation
        self._stop = stop

    @property
    def debug(self):
        return self._debug.get()

    @debug.setter
    def debug(self, level):
        self._debug.set(level)

    @classmethod
    def standalone(cls, argv=None):
        """A management view of this process alone: no writers, real everything else
        (a rotation is complete as soon as it begins)."""
        from kamflat.server.rotation import Rotator   # the process layer's, with no writers
        me = [Process(0, os.getpid(), 0, "attendant")]
        statistics = Statistics()
        rotator = Rotator({}, 0, statistics)
        return cls(
            argv=sys.argv if argv is None else argv,
            processes=lambda: me,
            rotate=rotator.rotate,
            begin_rotation=lambda: rotator.begin(blocking=False),
            statistics=statistics,
            stop=lambda: os.kill(os.getpid(), signal.SIGTERM),
        )

    def processes(self):
        """The process table, as a list of Process, in table order: Kamailio's MI `ps`
        (3.3 kex mi_core.c mi_ps) and core.psx/core.psa (core/core_cmd.c) walk pt[]
        from index 0 up to process_count."""
        return sorted(self._processes(), key=lambda p: p.idx)

    def shv_listing(self):
        """[(name, value)] of every shared variable, newest first: pv's add_shvar
        (pv_shv.c) prepends to sh_vars, and MI shv_get (mi_shvar_get) and RPC
        pv.shvGet without a name walk that list from its head."""
        return list(reversed(list(self.shv.items())))

    def stop(self):
        """Stop the whole server cleanly (MI `kill`)."""
        self._stop()
