"""The db_flatstore writer: Kamailio's DB API subset that appends records to table files.

    conn = kamflat.connect("flatstore:/var/log/acc", rank=1)
    conn.use_table("acc")
    conn.insert(None, ["INVITE", "ft-1", "", "call-1", "200", "OK", 1795763336])
    conn.close()

Files are `DIR/<table>_<N>.log` with N = 128 + rank for SIP workers (rank >= 1) and
N = -rank otherwise, as real Kamailio (3.1 and later) names them. A file is opened, in
append mode, on the first insert into its table, and reopened by name after a rotation.

Where this differs from Kamailio on purpose:
- Rotation is a generation counter (`RotationCounter`) that any process can advance, not a
  timestamp, so two rotations in one second both take effect.
- flush=False buffers whole records and writes only whole records; the buffer is written
  on rotation, `close_files()` and `close()`, so nothing is torn or lost on a clean close.
- A file that cannot be opened (directory missing, not writable) or written (disk full)
  raises FlatstoreError naming the path; nothing of that record stays in the file or the
  buffer, and the same insert can be retried. The connection recovers by itself when the
  directory is back: no restart, no rotation needed.
- A file that ends in a partial record when it is opened (a process killed in the middle
  of a write, of any program) is cut back to its last newline, and the cut is logged: no
  record is ever appended after half a record.
- Each table keeps count of the records it handed to the OS (`written_count()`), and
  `check_files()` finds files deleted or replaced under the connection since the last
  check, so a caller can tell when a record is really in the file at its path.
"""
import logging
import os

from kamflat.flatstore import integrity
from kamflat.flatstore.generation import RotationCounter
from kamflat.flatstore.integrity import J_BASE, J_END, J_INO, J_RECORDS, J_START
from kamflat.flatstore.record import make_encoder

__all__ = ["connect", "FlatConnection", "RotationCounter", "FlatstoreError",
           "NotSupportedError", "table_file_name"]

URL_SCHEME = "flatstore:"
FILE_SUFFIX = ".log"
FILE_MODE = 0o644
# Read access too: opening checks whether the file ends in a partial record.
OPEN_FLAGS = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
BUFFER_SIZE = 64 * 1024  # flush=False writes the buffered records once they reach this
_write = os.write         # one global lookup on the insert path instead of two
_NO_ROTATION = memoryview(bytearray(8)).cast("Q")  # a connection without a counter: 0

log = logging.getLogger("kamflat.flatstore")


def _private_cell(table):   # a written-records counter for a connection without statistics
    return memoryview(bytearray(8)).cast("Q")


class FlatstoreError(Exception):
    """A flatstore file could not be opened or written; `path` names it."""

    def __init__(self, message, path=None):
        super().__init__(message)
        self.path = path


class NotSupportedError(Exception):
    """A Kamailio DB API operation that db_flatstore does not have."""


# ---- names -----------------------------------------------------------------------------

def check_table_name(table):
    """Refuse table names that could make the file name leave the directory."""
    if not isinstance(table, str):
        raise ValueError("flatstore table name must be a str, not %s" % type(table).__name__)
    for bad, why in (("/", "contains '/'"), ("..", "contains '..'"), ("\0", "contains NUL")):
        if bad in table:
            raise ValueError("flatstore table name %r refused: it %s" % (table, why))
    if not table:
        raise ValueError("flatstore table name refused: it is empty")


def table_file_name(table, rank):
    """`<table>_<N>.log`: N = 128 + rank for ranks >= 1 (SIP workers), -rank otherwise."""
    check_table_name(table)
    if not isinstance(rank, int) or isinstance(rank, bool):
        raise ValueError("flatstore rank must be an int, not %r" % (rank,))
    return "%s_%d%s" % (table, 128 + rank if rank >= 1 else -rank, FILE_SUFFIX)


def parse_url(url):
    """The directory of a `flatstore:<dir>` URL (everything after the first ':')."""
    if not isinstance(url, str) or not url.startswith(URL_SCHEME) or not url[len(URL_SCHEME):]:
        raise ValueError("not a flatstore URL: %r (expected 'flatstore:<directory>', "
                         "e.g. 'flatstore:/var/log/acc')" % (url,))
    return url[len(URL_SCHEME):]


# ---- one table file --------------------------------------------------------------------

class _TableFile:
    """DIR/<table>_<N>.log: its descriptor once opened, and (flush=False) the records not
    written yet. Every write leaves the file at a record boundary.

    `written` counts every record handed to the OS since the connection began (it only
    grows: it numbers the records, so a caller can tell when record k is in the OS);
    `cell` is the shared written-records statistic, kept in step with every write."""
    __slots__ = ("path", "fd", "pending", "pending_size", "written", "cell", "ident",
                 "ino", "end", "journal")

    def __init__(self, path, cell, journal):
        self.path = path
        self.journal = journal
        self.end = 0             # the open file's size: only this connection appends
        self.fd = None
        self.pending = []
        self.pending_size = 0
        self.written = 0
        self.cell = cell
        self.ident = None        # (st_dev, st_ino) of the open file
        self.ino = 0

    def open(self):
        try:
            try:
                fd = os.open(self.path, OPEN_FLAGS, FILE_MODE)
            except PermissionError:    # writable, not readable: append without the check
                fd = os.open(self.path, OPEN_FLAGS & ~os.O_RDWR | os.O_WRONLY, FILE_MODE)
            else:
                integrity.cut_torn_tail(fd, self.path)
            st = os.fstat(fd)
        except OSError as error:
            raise FlatstoreError("cannot open flatstore file %s: %s (the directory %s must "
                                 "exist and be writable)" % (self.path, error.strerror,
                                                             os.path.dirname(self.path)),
                                 self.path) from None
        self.fd, self.ident, self.ino, self.end = fd, (st.st_dev, st.st_ino), st.st_ino, \
            st.st_size
        return fd

    def note(self, size, records):
        """Journal the write about to be made (see kamflat.flatstore.integrity); END is 0
        here: cleared after every write."""
        journal = self.journal
        journal[J_INO] = self.ino
        journal[J_BASE] = self.cell[0]
        journal[J_START] = self.end
        journal[J_RECORDS] = records
        journal[J_END] = self.end + size

    def wrote(self, size, records):
        self.end += size
        self.written += records
        self.cell[0] += records
        self.journal[J_END] = 0
        self.journal[J_RECORDS] = 1   # what a one-record write leaves unsaid (insert())

    def resync(self):
        """After a failed write: where the file really ends now."""
        self.journal[J_END] = 0
        self.journal[J_RECORDS] = 1
        if self.fd is not None:
            try:
                self.end = os.fstat(self.fd).st_size
            except OSError:
                pass

    def where(self):
        """'ok', 'deleted' or 'moved': see integrity.file_state."""
        return "ok" if self.fd is None else integrity.file_state(self.fd, self.path,
                                                                  self.ident)

    def drop_fd(self):
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)

    def failed(self, error):
        return FlatstoreError("cannot write to flatstore file %s: %s"
                              % (self.path, error.strerror), self.path)

    def finish(self, data, written, records):
        """Write the rest of `data` after a short write (disk full, size limit, signal).

        If that fails, the torn record at the end of the file is cut off again, so the
        file ends at a record boundary; returns nothing, raises FlatstoreError with the
        number of whole records that did reach the file in `.records_written`.
        """
        view = memoryview(data)
        while written < len(data):
            try:
                count = _write(self.fd, view[written:])
                if count == 0:
                    raise OSError(28, os.strerror(28))  # ENOSPC: no progress
            except OSError as error:
                failure = self.failed(error)
                failure.records_written = integrity.cut_short_write(self.fd, written, records)
                raise failure from None
            written += count

    def write(self, data, records):
        fd = self.fd if self.fd is not None else self.open()
        self.note(len(data), len(records))
        try:
            written = _write(fd, data)
        except OSError as error:
            self.resync()
            raise self.failed(error) from None
        if written != len(data):
            try:
                self.finish(data, written, records)
            except FlatstoreError:
                self.resync()
                raise

    def write_pending(self):
        """Write the buffered records (one write() of whole records); on failure keep
        those that did not reach the file."""
        if not self.pending:
            return
        try:
            self.write(b"".join(self.pending), self.pending)
        except FlatstoreError as error:
            done = getattr(error, "records_written", 0)
            del self.pending[:done]
            self.pending_size = sum(map(len, self.pending))
            self.written += done
            self.cell[0] += done
            raise
        self.wrote(self.pending_size, len(self.pending))
        self.pending.clear()
        self.pending_size = 0

    def close(self):
        try:
            self.write_pending()
        finally:
            self.drop_fd()


# ---- the connection --------------------------------------------------------------------

class FlatConnection:
    """A flatstore connection: `use_table()`, `insert()`, `close_files()`, `close()`.

    One per process (or per thread): like Kamailio's, it is not meant to be shared across
    fork; make it in the process that writes.
    """

    def __init__(self, directory, rank=1, flush=True, encode_delimiter=True,
                 encode_newlines=False, rotation=None, written_cell=None, journal=None):
        """written_cell(table) -> a one-item memoryview ("Q") the connection adds every
        record written into `table` to, as it writes it (shared statistics); journal: a
        memoryview ("Q") of integrity.JOURNAL_WORDS that outlives the process."""
        self.directory = os.path.abspath(directory)
        self._written_cell = written_cell or _private_cell
        self.rank = rank
        self.flush = bool(flush)
        self._direct = self.flush  # insert() writes at once (flush=True and no hold())
        self._journal = journal if journal is not None else integrity.private_journal()
        if not self._journal[J_END]:    # else a predecessor's entry: repair_files() first
            self._set_journal_records()
        self.rotation = rotation
        self._suffix = table_file_name("t", rank)[1:]  # "_<N>.log"; validates the rank
        if rotation is not None and not isinstance(rotation, RotationCounter):
            raise TypeError("rotation must be a RotationCounter or None, not %r" % (rotation,))
        self._encode = make_encoder(encode_delimiter, encode_newlines)
        self._files = {}       # table name -> _TableFile
        self._current = None   # the _TableFile of the table in use
        self._closed = False
        # The rotation check before each insert reads this shared number and compares
        # it with the generation last seen; without a counter, a number that never moves.
        self._rotation_cell = rotation._cell if rotation is not None else _NO_ROTATION
        self._generation = self._rotation_cell[0]

    def path(self, table):
        """Where records for `table` go."""
        check_table_name(table)
        return os.path.join(self.directory, table + self._suffix)

    def use_table(self, table):
        """Select the table the next inserts go to (its file opens on the first insert)."""
        current = self._files.get(table)
        if current is None:
            if self._closed:
                raise FlatstoreError("flatstore connection to %s is closed" % self.directory)
            current = self._files[table] = _TableFile(
                self.path(table), self._written_cell(table), self._journal)
        self._current = current

    def insert(self, keys, values):
        """Append one record to the current table's file.

        `keys` (column names) may be None; flatstore does not write them, but if given
        there must be one per value. With flush=True the record has been handed to the OS
        when this returns; with flush=False it is buffered (whole) and written later.
        Raises FlatstoreError if the file cannot be opened or written: then nothing of the
        record was kept and the same insert can be retried.
        """
        if self._rotation_cell[0] != self._generation:
            self._reopen_after_rotation()
        table = self._current
        if table is None:
            raise FlatstoreError(
                "flatstore connection to %s is closed" % self.directory if self._closed
                else "no table selected: call use_table(name) before insert()")
        line = self._encode(values)
        if keys is not None and len(keys) != len(values):
            raise ValueError("insert into %s: %d keys but %d values"
                             % (table.path, len(keys), len(values)))
        if self._direct:
            if table.pending:
                table.write_pending()   # what hold() left buffered goes first
            fd = table.fd
            if fd is None:
                fd = table.open()
            # table.note() and table.wrote(), inlined: this is the hot path
            journal, cell, end, size = self._journal, table.cell, table.end, len(line)
            journal[J_INO] = table.ino      # (J_RECORDS is 1 between writes: see wrote())
            journal[J_BASE] = cell[0]
            journal[J_END] = end + size
            try:
                written = _write(fd, line)
            except OSError as error:
                table.resync()
                raise table.failed(error) from None
            if written != size:
                try:
                    table.finish(line, written, (line,))
                except FlatstoreError:
                    table.resync()
                    raise
            table.end = end + size
            table.written += 1
            cell[0] += 1
            journal[J_END] = 0
        else:
            # flush=0, the cheap path: one append per record, one write() per block.
            size = table.pending_size + len(line)
            if size > BUFFER_SIZE or table.fd is None:
                if table.fd is None:
                    table.open()  # a missing directory fails now, not at some later flush
                if size > BUFFER_SIZE:
                    table.write_pending()  # before taking this record: a failure leaves it out
                size = table.pending_size + len(line)
            table.pending.append(line)
            table.pending_size = size

    def hold(self, held=True):
        """flush=True: buffer the next inserts as flush=False does, until hold(False); then
        write_buffered() writes them at once (a writer's chunk, reported after)."""
        self._direct = self.flush and not held

    def _reopen_after_rotation(self):
        # Read the generation first: a rotation that comes while we close is seen next time.
        generation = self._rotation_cell[0]
        self.close_files()
        self._generation = generation

    def close_files(self):
        """Write everything buffered and close every open file now; the next insert into a
        table reopens its file by name. Raises the first FlatstoreError after trying every
        file; records that could not be written stay buffered, none is lost."""
        self._each_table(_TableFile.close)

    def write_buffered(self):
        """Write the records flush=False holds back (whole records), keeping files open.
        Same errors as close_files()."""
        self._each_table(_TableFile.write_pending)

    @property
    def buffered(self):
        """True when flush=False holds records that are not in a file yet."""
        return any(table.pending for table in self._files.values())

    def written_count(self, table):
        """Records of `table` handed to the OS since this connection began."""
        current = self._files.get(table)
        return current.written if current is not None else 0

    def taken_count(self, table):
        """Records of `table` inserted since this connection began (written or buffered):
        a record is in the OS once written_count() has reached its number."""
        current = self._files.get(table)
        return current.written + len(current.pending) if current is not None else 0

    def check_files(self):
        """Compare each open file with what is at its path now: {table: 'deleted' or
        'moved'} for those that differ. Both are closed: the next insert reopens by name,
        and buffered records stay buffered, for the new file. A deleted file took what was
        written into it with it; it is up to the caller to insert again what it had not
        reported yet (and uncount() it)."""
        found = {}
        for name, table in self._files.items():
            try:
                where = table.where()
            except OSError as error:   # fstat of our own descriptor: never expected
                log.error("cannot check flatstore file %s: %s", table.path, error)
                continue
            if where != "ok":
                found[name] = where
                table.drop_fd()
        return found

    def uncount(self, table, n):
        """Take n records off `table`'s written statistic (they went into a deleted file
        and are about to be inserted again)."""
        cell = self._files[table].cell
        cell[0] -= min(n, cell[0])

    def discard_buffered(self, table=None):
        """Drop what flush=False holds back for `table` (every table if None), without
        writing it: for records the caller has reported as not written, or will insert
        again. Returns how many records were dropped."""
        tables = self._files.values() if table is None else [self._files[table]]
        dropped = 0
        for current in tables:
            dropped += len(current.pending)
            current.pending.clear()
            current.pending_size = 0
        return dropped

    def repair_files(self):
        """Cut any of this connection's files in the directory that ends in a partial
        record, and count the journal's write if it reached its file; a writer does this
        when it starts. Returns the paths that were cut."""
        cut = integrity.repair_directory(self.directory, self._suffix, self._journal,
                                         self._written_cell)
        self._set_journal_records()
        return cut

    def _set_journal_records(self):
        if self.flush:     # one record per write: the hot path need not store it each time
            self._journal[J_RECORDS] = 1

    def _each_table(self, action):
        first_error = None
        for table in self._files.values():
            try:
                action(table)
            except FlatstoreError as error:
                first_error = first_error or error
        if first_error is not None:
            raise first_error

    def close(self):
        """close_files(), then forget the tables. If something buffered cannot be written
        the FlatstoreError is raised and the connection stays usable, so close() can be
        retried."""
        if self._closed:
            return
        self.close_files()
        self._files.clear()
        self._current = None
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __repr__(self):
        return "<FlatConnection %s%s rank=%s flush=%s%s>" % (
            URL_SCHEME, self.directory, self.rank, int(self.flush),
            " closed" if self._closed else "")


# Kamailio's DB API operations that db_flatstore leaves out (db_func_t members).
UNSUPPORTED_OPERATIONS = (
    "query", "fetch_result", "raw_query", "free_result", "delete", "update", "replace",
    "last_inserted_id", "insert_update", "insert_delayed", "insert_async", "affected_rows",
    "start_transaction", "end_transaction", "abort_transaction", "query_lock",
    "raw_query_async",
)


def _not_supported(name):
    def operation(self, *args, **kwargs):
        raise NotSupportedError("%s() is not supported by flatstore: it can only append "
                                "records with insert()" % name)
    operation.__name__ = operation.__qualname__ = name
    return operation


for _name in UNSUPPORTED_OPERATIONS:
    setattr(FlatConnection, _name, _not_supported(_name))


def connect(url, rank=1, flush=True, encode_delimiter=True, encode_newlines=False,
            rotation=None, written_cell=None, journal=None):
    """Open a flatstore connection: `connect("flatstore:/var/log/acc", rank=1)`.

    rank picks the file number as Kamailio's process rank does (1 -> acc_129.log, 0 ->
    acc_0.log, -1 -> acc_1.log). flush and encode_delimiter are db_flatstore's params;
    encode_newlines (kamflat's own) also writes CR/LF in strings as %0D/%0A. rotation is
    a RotationCounter shared with whoever rotates; written_cell, journal see FlatConnection. The
    directory is not checked here: like Kamailio, the first insert opens the file.
    """
    return FlatConnection(parse_url(url), rank=rank, flush=flush,
                          encode_delimiter=encode_delimiter,
                          encode_newlines=encode_newlines, rotation=rotation,
                          written_cell=written_cell, journal=journal)
