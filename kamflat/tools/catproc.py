"""`kamflat cat --json` on two CPUs: a forked converter turns some blocks into JSON lines.

Turning a block of records into JSON costs more than reading and merging it, and Python
runs one thread at a time, so with two CPUs and enough input cat forks a converter: after
each block cat converts itself, it sends the file's next SHARE blocks to the converter,
which sends back their JSON lines and time keys while cat works (Converter). cat still
reads every file, merges and prints, in one process, in the order it always does: the
converter only saves it work, and what it sends back is what cat would have made of the
same bytes (Printer.json_keyed in both).

Messages, both ways: a 12-byte header of three unsigned 32-bit numbers, then bytes. To
the converter: ticket, file number, block length; the block. Back: ticket, length of the
JSON lines, length of the rest; the lines, then marshal of (line starts, scale, extra,
time keys or None) (catjson.Lines).

How it ends: cat closes both pipes and waits for the converter, which exits at the end of
its input, or when its replies cannot be written. cat never blocks on a write to it (its
requests wait in a buffer while the converter's replies are read), so neither waits for
the other forever. A converter that fails or is killed makes cat fail (ConverterFailed,
status 2): what it had not sent back is missing. It ignores ^C; cat stops it.
"""
import fcntl
import marshal
import os
import select
import signal
import stat
import struct
import sys
import traceback

from kamflat.tools.catjson import Lines

HEADER = struct.Struct("<III")
SHARE = 2               # blocks sent to the converter after each one cat converts itself
MAX_IN_FLIGHT = 32      # blocks at the converter at most (their replies wait in cat's memory)
MAX_SENT = 1 << 26      # a bigger block (one huge record) is made in cat: its JSON could
                        # outgrow the headers' 32-bit lengths
PIPE_BUFFER = 1 << 18   # the converter's reads and writes
READ_SIZE = 1 << 20     # cat's reads of replies
PIPE_SIZE = 1 << 20     # what cat asks of its pipes, stdout too (the default is 64 KiB)
SPLIT_MIN_BYTES = 1 << 20   # less input than this: one process (a fork costs a few ms)


def widen_pipe(out):
    """Let a pipe (`out`: a file or a descriptor) hold PIPE_SIZE bytes, if it is a pipe and
    holds less: whoever reads it is woken for every pipeful, and a pipeful of 64 KiB is a
    few hundred JSON lines. Where that cannot be done, the pipe stays as it is."""
    try:
        fd = out if isinstance(out, int) else out.fileno()
        if stat.S_ISFIFO(os.fstat(fd).st_mode) and \
                fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ) < PIPE_SIZE:
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except (OSError, ValueError, AttributeError):   # no fd, not Linux, over the user's quota
        pass


class ConverterFailed(Exception):
    """The converter process ended before it sent back every block it was sent."""


def worth_splitting(directory, files):
    """A converter when this process may run on two CPUs and there is enough input."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    if cpus < 2:
        return False
    size = 0
    for table_file in files:
        try:
            size += os.stat(os.path.join(directory, table_file.name)).st_size
        except OSError:
            pass
    return size >= SPLIT_MIN_BYTES


def _converter(printer, names, time_index, requests, replies):
    """The converter's loop: each block in, its JSON lines and time keys out."""
    read, write, size = requests.read, replies.write, HEADER.size
    while True:
        header = read(size)
        if len(header) < size:
            return
        ticket, number, length = HEADER.unpack(header)
        block = read(length)
        if len(block) < length:
            return
        lines, keys = printer.json_keyed(block, names[number], time_index)
        rest = marshal.dumps((lines.cum, lines.scale, lines.extra, keys))
        write(HEADER.pack(ticket, len(lines.data), len(rest)))
        write(lines.data)
        write(rest)
        replies.flush()


class Converter:
    """The forked converter, seen from cat: start() it, send() a block, result() its
    conversion, close() at the end (also after a failed or interrupted start())."""

    def __init__(self, printer, names, time_index):
        self._job = printer, names, time_index
        self.pid = None
        self._requests = self._replies = None
        self._numbers = {name: number for number, name in enumerate(names)}
        self._out = bytearray()      # requests not written yet
        self._in = bytearray()       # replies read, not taken apart yet
        # each read goes into the same buffer (a new 1 MiB bytes per read cost more than
        # the read: the memory is mapped and unmapped each time)
        self._chunk = bytearray(READ_SIZE)
        self._chunk_view = memoryview(self._chunk)
        self._done = {}              # ticket -> (lines, time keys)
        self._tickets = 0
        self.in_flight = 0

    def start(self):
        to_converter, self._requests = os.pipe()
        self._replies, from_converter = os.pipe()
        for fd in (self._requests, self._replies):
            widen_pipe(fd)
        os.set_blocking(self._requests, False)
        self._poll = select.poll()
        self._poll.register(self._replies, select.POLLIN)
        # ^C waits until the fork is done and its pid known (then close() can stop it),
        # and never reaches the converter (cat stops it)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            self.pid = os.fork()
            if self.pid == 0:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
                os.close(self._requests)
                os.close(self._replies)
                self._serve(to_converter, from_converter)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        os.close(to_converter)
        os.close(from_converter)

    def _serve(self, to_converter, from_converter):
        """The converter process, from its start to its exit."""
        status = 0
        try:
            with open(to_converter, "rb", buffering=PIPE_BUFFER) as reading, \
                    open(from_converter, "wb", buffering=PIPE_BUFFER) as writing:
                _converter(*self._job, reading, writing)
        except BrokenPipeError:
            pass                     # cat has gone, or stopped reading: nothing to say
        except BaseException:
            traceback.print_exc()
            status = 1
        finally:
            try:
                sys.stderr.flush()
            finally:
                os._exit(status)

    def send(self, file_name, block):
        """Queue a block for conversion: its ticket, or None when MAX_IN_FLIGHT are out or
        the block is bigger than MAX_SENT."""
        if self.in_flight >= MAX_IN_FLIGHT or len(block) > MAX_SENT:
            return None
        ticket = self._tickets
        self._tickets += 1
        self.in_flight += 1
        self._out += HEADER.pack(ticket, self._numbers[file_name], len(block))
        self._out += block
        self._pump(0)
        return ticket

    def result(self, ticket):
        """(catjson.Lines, time keys or None) of a block sent: waits for it."""
        while ticket not in self._done:
            self._pump(None)
        self.in_flight -= 1
        return self._done.pop(ticket)

    def _pump(self, timeout):
        """Write what the converter can take and read what it sent, waiting up to `timeout`
        seconds (None: until something happens) when neither can be done now."""
        if self._out:
            try:
                written = os.write(self._requests, self._out)
            except BlockingIOError:
                written = 0
            except BrokenPipeError:  # not cat's stdout: this must not pass for `| head`
                raise ConverterFailed(self._ended()) from None
            del self._out[:written]
            if self._out:            # the rest when the pipe has room
                self._poll.register(self._requests, select.POLLOUT)
        for fd, _ in self._poll.poll(None if timeout is None else timeout * 1000):
            if fd == self._replies:
                count = os.readv(self._replies, [self._chunk])
                if not count:
                    raise ConverterFailed(self._ended())
                self._in += self._chunk_view[:count]
                self._take_replies()
            elif fd == self._requests and not self._out:
                self._poll.unregister(self._requests)

    def _take_replies(self):
        buffer, size = self._in, HEADER.size
        start = 0
        with memoryview(buffer) as view:     # (released before the buffer is cut)
            while len(buffer) - start >= size:
                ticket, length, rest = HEADER.unpack_from(buffer, start)
                lines_end = start + size + length
                if len(buffer) < lines_end + rest:
                    break
                data = bytes(view[start + size:lines_end])
                cum, scale, extra, keys = marshal.loads(view[lines_end:lines_end + rest])
                self._done[ticket] = Lines(memoryview(data), cum, scale, extra), keys
                start = lines_end + rest
        del buffer[:start]

    def _ended(self):
        return "the JSON converter process %s before it sent back every block: the output " \
               "is incomplete" % (self._wait() or "exited")

    def _wait(self):
        """Wait for the converter: how it ended, or None if it exited 0."""
        _, status = os.waitpid(self.pid, 0)
        self.pid = None
        if os.WIFSIGNALED(status):
            return "was killed by signal %d" % os.WTERMSIG(status)
        return "exited with status %d" % os.WEXITSTATUS(status) if status else None

    def close(self):
        """Stop the converter (the end of its input; its replies go nowhere) and wait for
        it; raises ConverterFailed if it did not end cleanly."""
        for fd in (self._requests, self._replies):
            if fd is not None:
                os.close(fd)
        self._requests = self._replies = None
        how = self._wait() if self.pid is not None else None
        if how:
            raise ConverterFailed("the JSON converter process %s" % how)
