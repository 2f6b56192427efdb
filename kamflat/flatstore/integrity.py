"""What keeps a flatstore file whole and honest about itself, for the writer connection.

- A torn tail: a file that ends in a partial record (a process killed in the middle of
  a write(), of any program) is cut back to its last newline before anything is
  appended; the cut is logged. Those bytes were never reported as written.
- The write journal: before each write() the connection notes the file (inode), the
  written statistic before the write, where the write starts and ends and how many
  records it holds; END is stored last and cleared first, so a noted entry is always
  whole (END is 0 between writes, and RECORDS 1, so a one-record write notes neither
  RECORDS nor START). A writer killed between its write() and its count (or in the middle
  of a block) leaves the entry, and its successor counts what reached the file: every
  record if the file reaches END, else the whole records before the cut.
- Where a file is: an open file whose name is gone (deleted) or whose path now names
  another file (moved, replaced).
"""
import logging
import os

log = logging.getLogger("kamflat.flatstore")

TAIL_BLOCK = 64 * 1024    # how far back a torn tail is looked for, per read
J_INO, J_BASE, J_START, J_RECORDS, J_END = range(5)
JOURNAL_WORDS = 5


def private_journal():
    """A journal nobody outlives (a connection without shared memory)."""
    return memoryview(bytearray(8 * JOURNAL_WORDS)).cast("Q")


def cut_torn_tail(fd, path):
    """If the file ends in a partial record (a writer killed mid-write), cut it back to its
    last newline: those bytes were never reported as written. Returns the bytes cut."""
    size = os.fstat(fd).st_size
    if not size or os.pread(fd, 1, size - 1) == b"\n":
        return 0
    end = size
    while end > 0:
        start = max(0, end - TAIL_BLOCK)
        newline = os.pread(fd, end - start, start).rfind(b"\n")
        if newline >= 0:
            end = start + newline + 1
            break
        end = start
    head = os.pread(fd, min(60, size - end), end)
    os.ftruncate(fd, end)
    log.warning("flatstore file %s ended in a partial record: cut %d bytes beginning %r "
                "(never reported as written)", path, size - end, head)
    return size - end


def cut_short_write(fd, written, records):
    """After a write of the joined `records` that stopped at `written` bytes and could not
    be finished: cut the torn record at the end of the file again, so the file ends at a
    record boundary. Returns how many whole records reached the file. (The records' sizes
    are only needed here, after a short write, so the hot path does not count them.)"""
    whole = count = 0
    for record in records:
        size = len(record)
        if whole + size > written:
            break
        whole += size
        count += 1
    torn = written - whole
    if torn:
        # O_APPEND leaves the offset at the end of our write; truncate only if nobody
        # appended after it (a file shared by several processes), else it stays torn.
        try:
            end = os.lseek(fd, 0, os.SEEK_CUR)
            if os.fstat(fd).st_size == end:
                os.ftruncate(fd, end - torn)
        except OSError:
            pass  # the write error being raised says more than this one
    return count


def count_journaled(fd, journal, cell):
    """The journal's write went to the file open as `fd` (after its tail was cut): bring
    the written statistic `cell` up to what reached it."""
    size = os.fstat(fd).st_size
    if size >= journal[J_END]:
        records = journal[J_RECORDS]
    elif journal[J_RECORDS] == 1 or size <= journal[J_START]:
        records = 0       # (a one-record write does not note its START)
    else:     # killed in the middle of a block: its whole records before the cut
        records = os.pread(fd, size - journal[J_START], journal[J_START]).count(b"\n")
    cell[0] = max(cell[0], journal[J_BASE] + records)


def repair_directory(directory, suffix, journal, written_cell):
    """For every file in `directory` named *<suffix> (one writer's files): cut a torn
    tail, and count the journal's write if it went there; then clear the journal.
    written_cell(table) -> the statistic cell. Returns the paths that were cut."""
    cut = []
    try:
        names = os.listdir(directory)
    except OSError:
        names = []     # a missing directory is reported by the first insert
    for name in sorted(names):
        if not name.endswith(suffix):
            continue
        path = os.path.join(directory, name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            if cut_torn_tail(fd, path):
                cut.append(path)
            if journal[J_END] and os.fstat(fd).st_ino == journal[J_INO]:
                count_journaled(fd, journal, written_cell(name[:-len(suffix)]))
        except OSError as error:
            log.error("cannot check flatstore file %s: %s", path, error.strerror)
        finally:
            os.close(fd)
    journal[J_END] = 0
    return cut


def file_state(fd, path, ident):
    """'ok', or what happened to the file open as `fd`, opened at `path` as `ident`
    (st_dev, st_ino): 'deleted' (no name left: what was written into it is gone with
    it) or 'moved' (it still has a name, but `path` is another file or none: renamed,
    e.g. by a rotation; what it holds is whole)."""
    if os.fstat(fd).st_nlink == 0:
        return "deleted"
    try:
        st = os.stat(path)
    except OSError:
        return "moved"
    return "ok" if (st.st_dev, st.st_ino) == ident else "moved"
