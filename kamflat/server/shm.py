"""State the server's processes share: statistics and the process table.

Kamailio keeps these in shared memory; so does kamflat, in one anonymous mmap made
by the master before it forks, so every child sees the same pages.

Counters are written without locks: every process slot has its own row of
values and only that process adds to it; a reader sums the rows. A reset stores
the current sum as a base instead of touching other processes' rows. Only the
registration of a new counter name takes a lock.
"""
import mmap
import multiprocessing
import struct

from kamflat.mgmt.manage import Process, Stat

MAX_PROCS = 64
MAX_COUNTERS = 256
NAME_LEN = 64
DESC_LEN = 96

# Layout: [count][names][bases][values per proc][process table]
_COUNT = 0
_NAMES = 8
_BASES = _NAMES + MAX_COUNTERS * NAME_LEN
_VALUES = _BASES + MAX_COUNTERS * 8
_PROCS = _VALUES + MAX_PROCS * MAX_COUNTERS * 8
_PROC = struct.Struct("qq%ds" % DESC_LEN)  # pid, rank, description
_CORE = _PROCS + MAX_PROCS * _PROC.size    # core values: debug, debug given
_JOURNAL = _CORE + 2 * 8                   # per proc: the write in flight (see journal())
JOURNAL_WORDS = 5     # flatstore.connection.JOURNAL_WORDS
_SIZE = _JOURNAL + MAX_PROCS * JOURNAL_WORDS * 8


class SharedState:
    """Statistics and process table in shared memory; create before forking."""

    def __init__(self):
        self._mem = mmap.mmap(-1, _SIZE)
        self._words = memoryview(self._mem).cast("Q")
        self._lock = multiprocessing.Lock()
        self._index = {}   # this process's cache: (group, name) -> counter number
        self.slot = 0      # this process's row; set by the process after fork
        # Kamailio's core debug value: one for every process, as its cfg framework
        # makes `cfg.set_now_int core debug` seen by all (see CoreValue).
        self.debug = CoreValue(self._mem, _CORE)
        self.debug_given = CoreValue(self._mem, _CORE + 8)

    # -- statistics: the interface manage.Statistics has --------------------
    def register(self, group, name):
        return self._counter(group, name)

    def add(self, group, name, n=1):
        i = self._index.get((group, name))
        if i is None:
            i = self._counter(group, name)
        self._words[(_VALUES // 8) + self.slot * MAX_COUNTERS + i] += n

    def cell(self, group, name):
        """This process's value of a counter as a one-item memoryview: a process that
        counts on a hot path adds to it directly (cell[0] += n), as add() would."""
        i = self._index.get((group, name))
        if i is None:
            i = self._counter(group, name)
        start = (_VALUES // 8) + self.slot * MAX_COUNTERS + i
        return self._words[start:start + 1]

    def snapshot(self):
        stats = []
        for i in range(self._words[_COUNT]):
            group, name = self._name(i)
            stats.append(Stat(group, name, self._total(i) - self._words[_BASES // 8 + i]))
        return stats

    def reset(self, group, name):
        for i in range(self._words[_COUNT]):
            if self._name(i) == (group, name):
                self._words[_BASES // 8 + i] = self._total(i)
                return True
        return False

    def _total(self, i):
        start = _VALUES // 8 + i
        return sum(self._words[start + p * MAX_COUNTERS] for p in range(MAX_PROCS))

    def _name(self, i):
        raw = self._mem[_NAMES + i * NAME_LEN:_NAMES + (i + 1) * NAME_LEN].rstrip(b"\0")
        group, _, name = raw.decode().partition(":")
        return group, name

    def _counter(self, group, name):
        key = (group, name)
        with self._lock:
            for i in range(self._words[_COUNT]):
                if self._name(i) == key:
                    break
            else:
                i = self._words[_COUNT]
                if i >= MAX_COUNTERS:
                    raise RuntimeError("more than %d statistics" % MAX_COUNTERS)
                encoded = ("%s:%s" % key).encode()[:NAME_LEN]
                self._mem[_NAMES + i * NAME_LEN:_NAMES + i * NAME_LEN + len(encoded)] = encoded
                self._words[_COUNT] = i + 1
        self._index[key] = i
        return i

    def journal(self):
        """This process's write journal (JOURNAL_WORDS words): a writer notes each write
        before making it, so the writer restarted in its slot after a kill -9 can count
        a write whose statistic its predecessor did not live to add (flatstore's
        FlatConnection `journal`)."""
        start = _JOURNAL // 8 + self.slot * JOURNAL_WORDS
        return self._words[start:start + JOURNAL_WORDS]

    # -- process table ------------------------------------------------------
    def set_process(self, idx, pid, rank, desc):
        raw = desc.encode()[:DESC_LEN]
        _PROC.pack_into(self._mem, _PROCS + idx * _PROC.size, pid, rank, raw)

    def processes(self):
        table = []
        for idx in range(MAX_PROCS):
            pid, rank, raw = _PROC.unpack_from(self._mem, _PROCS + idx * _PROC.size)
            if pid:
                table.append(Process(idx, pid, rank, raw.rstrip(b"\0").decode()))
        return table


class CoreValue:
    """One signed word of the shared pages: get() / set(n), seen by every process."""

    _WORD = struct.Struct("q")

    def __init__(self, mem, offset):
        self._mem, self._offset = mem, offset

    def get(self):
        return self._WORD.unpack_from(self._mem, self._offset)[0]

    def set(self, value):
        self._WORD.pack_into(self._mem, self._offset, value)
