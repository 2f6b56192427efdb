"""Opening a table's files for reading: regular files only (a FIFO would wait for a
writer), .gz files decompressed on a worker thread ahead of their reader, and the errors
that name a file that cannot be read (reader.read_file_blocks uses them all).

IO, but no parsing: what a record is stays in reader.py.
"""
import lzma
import os
import stat
import zlib


class DamagedFileError(OSError):
    """A compressed file whose data cannot be decompressed to its end (truncated, corrupt,
    or not in the format its name says): `path` names it."""

    def __init__(self, path, error):
        super().__init__("%s: cannot decompress it (%s): only its whole records before that "
                         "point were read" % (path, str(error) or type(error).__name__))
        self.path = path


class NotRegularFileError(OSError):
    """A table file name that is not a regular file (a FIFO, a directory, a device): read,
    a FIFO would wait for a writer forever. `path` names it."""

    def __init__(self, path, kind):
        super().__init__("%s: not a regular file (%s): left out" % (path, kind))
        self.path = path


def _kind(mode):
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return kind
    return "mode %o" % stat.S_IFMT(mode)


def open_regular(path):
    """The file at `path` opened for reading (unbuffered), if it is a regular file; else
    NotRegularFileError. Opened without waiting: a FIFO's open would wait for a writer."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(path, _kind(mode))
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return open(fd, "rb", buffering=0)


# What the decompressors raise for bad data (gzip's BadGzipFile and bz2's are OSErrors).
DECOMPRESSION_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError)

# A .gz file is read GZIP_INPUT compressed bytes at a time and handed on GZIP_OUTPUT
# decompressed bytes at most at a time (a small input can expand a thousandfold).
GZIP_INPUT = 1 << 18
GZIP_OUTPUT = 1 << 20
_decompressing = []   # the thread that reads ahead in .gz files (made when needed)


class GzipInflater:
    """A .gz file's decompressed bytes, read() after read() (b"" at its end), with zlib
    alone: big reads, so that on a worker thread it takes the GIL a few times per MiB
    (gzip.GzipFile reads 8 KiB at a time on 3.11, and each read would be a handoff).
    Members one after the other and zero padding after one are read as gzip reads them;
    zlib checks each member's CRC and length."""

    def __init__(self, raw):
        self.raw = raw          # the file, opened unbuffered
        self.member = None      # the zlib decompressor of the member being read
        self.tail = b""         # input read and not decompressed yet

    def read(self):
        while True:
            data, self.tail = self.tail or self.raw.read(GZIP_INPUT), b""
            member = self.member
            if not data:
                if member is None:
                    return b""
                out = member.flush()
                if not member.eof:
                    raise EOFError("compressed file ended before the end-of-stream marker "
                                   "was reached")
                self.member = None
                return out
            if member is None:
                data = data.lstrip(b"\0")
                if not data:
                    continue
                member = self.member = zlib.decompressobj(31)   # 31: gzip header, trailer
            out = member.decompress(data, GZIP_OUTPUT)
            if member.eof:
                self.tail, self.member = member.unused_data, None
            else:
                self.tail = member.unconsumed_tail
            if out:
                return out


def read_ahead(read, piece):
    """read() calls, each done on a thread while the caller works on the one before:
    zlib lets go of the GIL while it works, so decompression takes a core of its own.
    One thread serves every file, each with one read in flight: bounded memory, whatever
    the number of rotated files. Yields the data `piece` bytes at a time."""
    if not _decompressing:
        from concurrent.futures import ThreadPoolExecutor   # only cat --rotated needs it
        _decompressing.append(ThreadPoolExecutor(1, thread_name_prefix="kamflat-decompress"))
    submit = _decompressing[0].submit
    ahead = submit(read)
    try:
        while True:
            data = ahead.result()
            if not data:
                return
            ahead = submit(read)
            for start in range(0, len(data), piece):
                yield data[start:start + piece]
    finally:
        # a read still running ends before the caller closes the file
        if not ahead.cancel():
            try:
                ahead.result()
            except DECOMPRESSION_ERRORS:
                pass
