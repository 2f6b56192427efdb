"""The rotation generation counter in shared memory (kamflat.flatstore.RotationCounter).

A rotation is a generation number any process can advance, not a timestamp, so two
rotations in one second both take effect; each connection compares it before an insert.
"""
import fcntl
import mmap
import os
import tempfile
import threading


class RotationCounter:
    """A rotation generation number in shared memory.

    RotationCounter() is anonymous shared memory: create it before forking and every
    child sees the same number. RotationCounter(path) maps an 8-byte file (created if
    missing) so unrelated processes can share it. Readers only compare the number (one
    8-byte read, no lock) with the generation they last saw (a read racing an advance
    may see a mix of old and new bytes: that costs one extra reopen, never a missed
    rotation). `advance()` increments under a POSIX record lock on the file (which
    excludes other processes, including forked children) plus a thread lock (which
    excludes other threads of this process).
    Close the counter only after the connections that use it.
    """
    SIZE = 8

    def __init__(self, path=None):
        self.path = path
        if path is None:
            if hasattr(os, "memfd_create"):
                self._fd = os.memfd_create("kamflat-rotation", os.MFD_CLOEXEC)
            else:
                with tempfile.TemporaryFile() as f:
                    self._fd = os.dup(f.fileno())
        else:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            size = os.fstat(self._fd).st_size
            if size < self.SIZE:
                os.ftruncate(self._fd, self.SIZE)  # a new counter starts at 0
            elif size > self.SIZE:
                raise ValueError("%s is not a rotation counter: %d bytes, expected %d"
                                 % (path, size, self.SIZE))
            self._map = mmap.mmap(self._fd, self.SIZE)
            self._cell = memoryview(self._map).cast("Q")  # the number, a native uint64
        except BaseException:
            os.close(self._fd)
            raise
        self._lock = threading.Lock()

    @property
    def value(self):
        return self._cell[0]

    def advance(self):
        """Start a new generation; returns it. Safe with several advancing processes."""
        with self._lock:
            fcntl.lockf(self._fd, fcntl.LOCK_EX)
            try:
                value = self._cell[0] = (self._cell[0] + 1) % 2**64
                return value
            finally:
                fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def close(self):
        if self._fd is not None:
            self._cell.release()
            self._map.close()
            os.close(self._fd)
            self._fd = None

    def __repr__(self):
        state = "closed" if self._fd is None else "value=%d" % self.value
        return "RotationCounter(%r, %s)" % (self.path, state)
