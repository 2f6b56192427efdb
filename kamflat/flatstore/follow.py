"""Follow a table's flatstore files across rotations: every record exactly once.

How it keeps "exactly once" (the writer is Kamailio or kamflat, the rotation is
`mv acc_129.log ...; kamctl fifo flat_rotate` or logrotate):
- Files are tracked by inode, not by name, through a file descriptor we keep open, with our
  offset in it. A rename changes nothing for us: we go on reading the same inode.
- Only whole lines are handed out; a partial last line waits for the rest (RecordSplitter).
- A live name (`<table>_<N>.log`) whose inode we do not know yet is a new file: read it from
  its start. A rotated name (`<table>_<N>.log.1`, `...-20260101`) whose inode we never saw
  is a file that was created and renamed between two looks: read it from its start too.
  Rotated files that already existed when following started are history and are skipped;
  compressed ones are never followed (they are copies of what we read).
- A file that is no longer under a live name is "retired": the writer may still append until
  it reopens (Kamailio reopens lazily, on its next record), so we keep reading it. We close it
  once it is deleted and read to its end, or after `retire_after` seconds without growth.

Wake-ups come from pyinotify on the directory when it is available (imported lazily; it is
optional), else from polling every `poll_interval`. Either way each wake-up does the same
scan-and-read, so both modes give the same records; inotify only makes them arrive sooner.
"""
import os
import stat
import threading
import time
from typing import NamedTuple

from kamflat.flatstore.reader import RecordSplitter, match_table_file, table_file_pattern

INOTIFY_MASK_NAMES = ("IN_CREATE", "IN_MOVED_FROM", "IN_MOVED_TO", "IN_MODIFY",
                      "IN_CLOSE_WRITE", "IN_DELETE")
READ_CHUNK = 1 << 16


class FollowedRecord(NamedTuple):
    raw: bytes       # the record as on disk, without its `\n`
    file: str        # the name the file had when we (last) found it
    inode: int


class _Tracked:
    """One open file we read: its fd, our offset in it, and the partial line we hold."""

    def __init__(self, fd, name, inode):
        self.fd = fd
        self.name = name
        self.inode = inode
        self.offset = 0
        self.splitter = RecordSplitter()
        self.live = True            # still under a live `<table>_<N>.log` name
        self.quiet_since = None     # monotonic time since it is retired and not growing


class Follower:
    """Follow `table`'s files in `directory`.

    mode: "auto" (inotify if pyinotify works, else polling), "inotify" or "poll".
    from_end: start at the current end of the live files (like `tail -n0 -F`) instead of
    their start. rotated: also read the uncompressed rotated files that exist at the start
    (else they are history and skipped). on_notice(msg): called with one-line notes (fallback
    to polling, truncated files, torn last lines); defaults to ignoring them.
    """

    def __init__(self, directory, table, mode="auto", from_end=False, poll_interval=0.1,
                 retire_after=30.0, on_notice=None, rotated=False):
        if mode not in ("auto", "inotify", "poll"):
            raise ValueError("mode must be auto, inotify or poll, not %r" % mode)
        if not os.path.isdir(directory):
            raise FileNotFoundError("flatstore directory %s does not exist" % directory)
        self.directory = directory
        self.table = table
        self.poll_interval = poll_interval
        self.retire_after = retire_after
        self._notice = on_notice or (lambda msg: None)
        self._pattern = table_file_pattern(table)
        self._tracked = {}          # (dev, ino) -> _Tracked
        self._done = set()          # (dev, ino) of files read to the end and closed
        self._history = set()       # (dev, ino) of rotated files that predate us
        self._irregular = set()     # names that are no regular file (said once each)
        self._watch = None
        self.mode = self._start_watch() if mode != "poll" else "poll"
        if mode == "inotify" and self.mode != "inotify":
            self.close()
            raise RuntimeError("inotify mode requested but unavailable (see notices)")
        self._start(from_end, rotated)

    # -- setup -----------------------------------------------------------------------------

    def _start(self, from_end, rotated):
        for name, key, st in self._scan():
            table_file = match_table_file(name, self.table, True, self._pattern)
            if table_file.rotated:
                if rotated and not table_file.compression:
                    self._open(name, key)
                else:
                    self._history.add(key)
            elif key not in self._tracked:
                tracked = self._open(name, key)
                if tracked and from_end:
                    tracked.offset = _after_last_newline(tracked.fd, st.st_size)

    def _start_watch(self):
        try:
            self._watch = _InotifyWatch(self.directory)
            return "inotify"
        except Exception as exc:  # ImportError, no asyncore, inotify limits reached...
            self._notice("inotify unavailable (%s: %s); polling every %.0f ms"
                         % (type(exc).__name__, exc, self.poll_interval * 1000))
            return "poll"

    # -- the loop --------------------------------------------------------------------------

    def records(self, stop=None, timeout=None):
        """Yield FollowedRecords as they are written, until `stop` (a threading.Event) is set
        or `timeout` seconds have passed; never blocks longer than ~poll_interval between
        checks of either. Records already complete are handed out before stopping."""
        stop = stop or threading.Event()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            yield from self.poll()
            if stop.is_set() or (deadline is not None and time.monotonic() >= deadline):
                return
            wait = self.poll_interval
            if deadline is not None:
                wait = max(0.0, min(wait, deadline - time.monotonic()))
            if self._watch is not None:
                self._watch.wait(wait)
            else:
                stop.wait(wait)

    def poll(self):
        """One scan of the directory and one read of every tracked file; returns the records."""
        out = []
        live = set()
        for name, key, _st in self._scan():
            table_file = match_table_file(name, self.table, True, self._pattern)
            if not table_file.rotated:
                live.add(key)
            if key in self._tracked:
                self._tracked[key].name = name
            elif key not in self._done and key not in self._history and not table_file.compression:
                self._open(name, key)
        now = time.monotonic()
        for key, tracked in list(self._tracked.items()):
            tracked.live = key in live
            grew = self._read(tracked, out)
            if tracked.live or grew:
                tracked.quiet_since = None if tracked.live else now
            elif tracked.quiet_since is None:
                tracked.quiet_since = now
            if not tracked.live and self._finished(tracked, now):
                self._retire(key, tracked)
        return out

    # -- helpers ---------------------------------------------------------------------------

    def _scan(self):
        """(name, (dev, ino), stat) of every file of the table now in the directory."""
        found = []
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return found
        for entry in entries:
            if not match_table_file(entry.name, self.table, True, self._pattern):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:  # renamed away between listing and stat
                continue
            if not stat.S_ISREG(st.st_mode):   # a FIFO's open would wait for a writer
                if entry.name not in self._irregular:
                    self._irregular.add(entry.name)
                    self._notice("%s is not a regular file: left out" % entry.name)
                continue
            found.append((entry.name, (st.st_dev, st.st_ino), st))
        # Files seen neither now nor tracked can be forgotten: their inode may be reused.
        present = {key for _n, key, _s in found}
        self._done &= present
        self._history &= present
        return found

    def _open(self, name, key):
        try:
            fd = os.open(os.path.join(self.directory, name), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != key:  # replaced between scan and open: next scan gets it
            os.close(fd)
            return None
        tracked = self._tracked[key] = _Tracked(fd, name, st.st_ino)
        return tracked

    def _read(self, tracked, out):
        """Read what was appended; put whole records into `out`. True if anything was read."""
        size = os.fstat(tracked.fd).st_size
        if size < tracked.offset:  # copytruncate: start over (records in between are lost)
            self._notice("%s was truncated; reading it again from its start" % tracked.name)
            tracked.offset = 0
            tracked.splitter = RecordSplitter()
        grew = False
        while True:
            chunk = os.pread(tracked.fd, READ_CHUNK, tracked.offset)
            if not chunk:
                break
            grew = True
            tracked.offset += len(chunk)
            tracked.splitter.feed(chunk)
            # a last record ending in CR may go on with a folded header's next line: wait
            self._emit(tracked, tracked.splitter.records(hold_cr=True), out)
        if not grew:  # nothing came after it since the last look: it was complete
            self._emit(tracked, tracked.splitter.records(), out)
        return grew

    @staticmethod
    def _emit(tracked, raws, out):
        out.extend(FollowedRecord(raw, tracked.name, tracked.inode) for raw in raws)

    def _finished(self, tracked, now):
        if os.fstat(tracked.fd).st_nlink == 0:
            return True  # deleted and read to its end: nobody else can read more of it
        return tracked.quiet_since is not None and now - tracked.quiet_since >= self.retire_after

    def _retire(self, key, tracked):
        if tracked.splitter.pending:
            self._notice("%s ended with a partial record (%d bytes) that was never completed"
                         % (tracked.name, len(tracked.splitter.pending)))
        os.close(tracked.fd)
        del self._tracked[key]
        self._done.add(key)

    def close(self):
        for key, tracked in list(self._tracked.items()):
            os.close(tracked.fd)
            del self._tracked[key]
        if self._watch is not None:
            self._watch.close()
            self._watch = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _after_last_newline(fd, size):
    """Offset just past the last `\\n` before `size` (0 if none): where whole records end, so a
    record being written when we start is handed out once it is complete."""
    end = size
    while end > 0:
        start = max(0, end - READ_CHUNK)
        chunk = os.pread(fd, end - start, start)
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            return start + cut + 1
        end = start
    return 0


class _InotifyWatch:
    """pyinotify on one directory, used only as a doorbell: wait() returns early on events."""

    def __init__(self, directory):
        import pyinotify  # optional dependency: imported only when inotify is used

        mask = 0
        for name in INOTIFY_MASK_NAMES:
            mask |= getattr(pyinotify, name)
        self._manager = pyinotify.WatchManager()
        self._notifier = pyinotify.Notifier(self._manager, default_proc_fun=lambda event: None)
        try:
            result = self._manager.add_watch(directory, mask, quiet=False)
        except Exception:
            self.close()
            raise
        if result.get(directory, -1) < 0:
            self.close()
            raise OSError("cannot watch %s" % directory)

    def wait(self, timeout):
        """Block until an event arrives or `timeout` seconds pass; drain what arrived."""
        if self._notifier.check_events(timeout=int(timeout * 1000)):
            self._notifier.read_events()
            self._notifier.process_events()

    def close(self):
        self._notifier.stop()

