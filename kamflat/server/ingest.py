"""The ingest process: accepts senders on the ingest socket and spreads their lines.

It does no per-record work. It cuts each connection's stream at line ends into
chunks (up to 64 KiB), numbers them by their first line, and hands each chunk to
whichever writer can take it (round robin over the writers' data sockets). When
every writer is full it stops reading from senders, so the kernel slows them down:
backpressure, never a drop. Writers report each chunk back once it is written;
the reports carry the errors, which go back to the sender with their line numbers.
"""
import collections
import json
import logging
import os
import selectors
import signal
import time

from kamflat.proto import ingest as ingestwire
from kamflat.server.writer import CHUNK_HEADER, MARKER

log = logging.getLogger("kamflat.server.ingest")

READ_SIZE = 1 << 16
MAX_OUTPUT = 1 << 20      # error replies a sender has not read yet; past this, stop reading it
STOP_GRACE = 10.0         # how long a stop waits for writers to report outstanding chunks
STOP_READ_BUDGET = 1 << 22  # at a stop, bytes still read from each sender (what it had sent)


class Sender:
    """One connection on the ingest socket."""

    def __init__(self, conn_id, sock):
        self.id = conn_id
        self.sock = sock
        self.inbuf = b""
        self.outbuf = bytearray()
        self.next_line = 1
        self.skipping = False     # inside a line that was too long, until its newline
        self.eof = False
        self.cut_off = False      # the server stopped reading it before its end
        self.outstanding = 0      # chunks handed to writers and not yet reported
        self.written = 0
        self.errors = 0
        self.done_sent = False

    def lines_taken(self):
        return self.next_line - 1

    def error(self, line_no, message):
        self.errors += 1
        self.outbuf += ingestwire.encode_error(line_no, message)


class Ingest:
    def __init__(self, listener, writer_socks, state):
        self.listener = listener
        self.writers = list(writer_socks)
        self.state = state
        self.senders = {}                      # connection id -> Sender
        self.by_fd = {}                        # socket fd -> Sender
        self.queue = collections.deque()      # chunks waiting for a writer with room
        # Per writer socket: chunks handed over and not yet taken (in order), and the one
        # the writer holds. A writer takes one chunk at a time and says so, so after a
        # writer died the lost lines are known exactly: the chunk it held, and a chunk it
        # had read but not yet announced (found when its successor takes a later one, or
        # reaches the marker sent when it said hello).
        self.handed = {w.fileno(): collections.deque() for w in self.writers}
        self.held = {}
        self.by_writer_fd = {w.fileno(): w for w in self.writers}
        self.next_writer = 0
        self.counter = 0
        self.stopping = False
        self.sel = selectors.DefaultSelector()

    def handle_term(self, signum, frame):
        self.stopping = True

    def run(self):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, self.handle_term)
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        self.sel.register(wake_r, selectors.EVENT_READ, None)
        self.listener.setblocking(False)
        self.sel.register(self.listener, selectors.EVENT_READ, self.on_accept)
        for w in self.writers:
            w.setblocking(False)
            self.sel.register(w, selectors.EVENT_READ, self.on_report)
        while not self.stopping:
            self.step(None)
            while True:       # the wake-up pipe only interrupts select; empty it
                try:
                    if not os.read(wake_r, 512):
                        break
                except BlockingIOError:
                    break
        self.stop()
        return 0

    def step(self, timeout):
        for key, events in self.sel.select(timeout):
            if key.data is None:
                continue
            key.data(key.fileobj, events)
        self.dispatch()
        self.update_interest()

    # -- senders ------------------------------------------------------------
    def on_accept(self, listener, events):
        try:
            sock, _ = listener.accept()
        except BlockingIOError:
            return
        sock.setblocking(False)
        self.counter += 1
        sender = Sender((os.getpid() << 32) | self.counter, sock)
        self.senders[sender.id] = sender
        self.by_fd[sock.fileno()] = sender
        self.sel.register(sock, selectors.EVENT_READ, self.on_sender)
        self.state.add("ingest", "connections")

    def on_sender(self, sock, events):
        sender = self.by_fd[sock.fileno()]
        if events & selectors.EVENT_WRITE:
            self.flush_output(sender)
        if events & selectors.EVENT_READ and sender.id in self.senders:
            self.read_sender(sender)

    def read_sender(self, sender):
        try:
            data = sender.sock.recv(READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            log.info("ingest: connection lost: %s", exc)
            data = b""
        if data:
            self.take(sender, sender.inbuf + data)
        else:
            self.end_of_stream(sender)

    def end_of_stream(self, sender):
        sender.eof = True
        if sender.skipping:             # the too-long last line ends here
            sender.skipping = False
            sender.next_line += 1
        if sender.inbuf:                # a last line without its newline still counts
            self.take(sender, sender.inbuf + b"\n")
        else:
            self.maybe_done(sender)

    def take(self, sender, data):
        if sender.skipping:
            cut = data.find(b"\n")
            if cut < 0:
                sender.inbuf = b""
                return
            data = data[cut + 1:]
            sender.skipping = False
            sender.next_line += 1
        complete, sender.inbuf = ingestwire.split_lines(data)
        if len(sender.inbuf) > ingestwire.MAX_LINE:
            # Too long to ever be a record: refuse it now instead of buffering it.
            line_no = sender.next_line + complete.count(b"\n")
            sender.error(line_no, "line longer than %d bytes" % ingestwire.MAX_LINE)
            self.state.add("ingest", "errors")
            sender.inbuf = b""
            sender.skipping = True
        if complete:
            self.queue.append((sender, CHUNK_HEADER.pack(sender.id, sender.next_line) + complete))
            sender.outstanding += 1
            sender.next_line += complete.count(b"\n")
        self.maybe_done(sender)

    def maybe_done(self, sender):
        if sender.eof and not sender.outstanding and not sender.inbuf and not sender.skipping:
            if not sender.done_sent:
                sender.outbuf += ingestwire.encode_done(sender.lines_taken(), sender.written,
                                                        sender.errors, stopping=sender.cut_off)
                sender.done_sent = True
            self.flush_output(sender)

    def flush_output(self, sender):
        while sender.outbuf:
            try:
                n = sender.sock.send(sender.outbuf)
            except BlockingIOError:
                return
            except OSError:
                sender.outbuf.clear()
                break
            del sender.outbuf[:n]
        if sender.done_sent:
            self.drop(sender)

    def drop(self, sender):
        self.senders.pop(sender.id, None)
        self.by_fd.pop(sender.sock.fileno(), None)
        try:
            self.sel.unregister(sender.sock)
        except (KeyError, ValueError):
            pass
        sender.sock.close()

    # -- writers ------------------------------------------------------------
    def dispatch(self):
        """Hand queued chunks to writers that have room, round robin."""
        while self.queue:
            sender, message = self.queue[0]
            for attempt in range(len(self.writers)):
                w = self.writers[(self.next_writer + attempt) % len(self.writers)]
                try:
                    w.send(message)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    # Never expected (chunks are bounded by MAX_LINE); refuse the chunk's
                    # lines by number rather than stop serving everyone.
                    self.queue.popleft()
                    self.refuse_chunk(sender, message, "could not hand lines to a writer: %s"
                                      % exc.strerror)
                    break
                self.next_writer = (self.next_writer + attempt + 1) % len(self.writers)
                self.queue.popleft()
                self.handed[w.fileno()].append((sender, message))   # (sender, chunk)
                break
            else:
                return      # every writer is full: wait until one has room

    def refuse_chunk(self, sender, message, reason):
        _, first_line = CHUNK_HEADER.unpack_from(message)
        count = message.count(b"\n", CHUNK_HEADER.size)   # the binary header may hold a 0x0A
        log.error("ingest: lines %d-%d: %s", first_line, first_line + count - 1, reason)
        for line_no in range(first_line, first_line + count):
            sender.error(line_no, reason)
        self.state.add("ingest", "errors", count)
        sender.outstanding -= 1
        self.maybe_done(sender)

    def on_report(self, writer, events):
        if events & selectors.EVENT_READ:
            while True:
                try:
                    message = writer.recv(1 << 21)
                except BlockingIOError:
                    break
                self.take_report(writer.fileno(), json.loads(message))

    def take_report(self, fd, report):
        if "taken" in report:            # the writer took this chunk
            self.held[fd] = self.take_handed(fd, CHUNK_HEADER.pack(*report["taken"]))
            return
        if "marker" in report:           # everything handed before the marker was taken
            self.take_handed(fd, MARKER)
            return
        if "hello" in report:            # a (re)started writer: its predecessor's chunk is gone
            lost = self.held.pop(fd, None)
            if lost is not None:
                self.lost(lost)
            try:
                self.by_writer_fd[fd].send(MARKER)
            except OSError:
                return      # its queue is full: the next chunk it takes tells what was lost
            self.handed[fd].append((None, MARKER))
            return
        self.held.pop(fd, None)
        sender = self.senders.get(report["c"])
        if sender is None:
            return          # the sender went away; the records are written all the same
        sender.outstanding -= 1
        sender.written += report["w"]
        for line_no, message in report["e"]:
            sender.error(line_no, message)
        sender.errors += report["x"] - len(report["e"])
        self.maybe_done(sender)
        self.flush_output(sender)

    def take_handed(self, fd, header):
        """The writer took the chunk starting with `header`: chunks handed before it and
        never announced were read by a writer that died. Returns the entry (or None)."""
        handed = self.handed[fd]
        if not any(message.startswith(header) for _, message in handed):
            return None     # handed over by an earlier ingest process
        while True:
            entry = handed.popleft()
            if entry[1].startswith(header):
                return entry
            self.lost(entry)

    def lost(self, entry):
        sender, message = entry
        if sender is not None and sender.id in self.senders:
            self.refuse_chunk(sender, message, "the writer died while writing these lines; "
                                               "some of them may be in the file")

    def update_interest(self):
        """Read senders only while chunks can move on; write to those with output."""
        room = not self.queue and not self.stopping   # a stop reads senders by itself
        for sender in list(self.senders.values()):
            events = 0
            if room and not sender.eof and len(sender.outbuf) < MAX_OUTPUT:
                events |= selectors.EVENT_READ
            if sender.outbuf:
                events |= selectors.EVENT_WRITE
            self._interest(sender.sock, events, self.on_sender)
        for w in self.writers:
            self._interest(w, selectors.EVENT_READ | (selectors.EVENT_WRITE if self.queue else 0),
                           self.on_report)

    def _interest(self, fileobj, events, callback):
        try:
            current = self.sel.get_key(fileobj).events
        except KeyError:
            current = 0
        if events == current:
            return
        if not events:
            self.sel.unregister(fileobj)
        elif not current:
            self.sel.register(fileobj, events, callback)
        else:
            self.sel.modify(fileobj, events, callback)

    # -- stopping -----------------------------------------------------------
    def stop(self):
        """Take what senders have already sent, see it written, tell them, close."""
        self.sel.unregister(self.listener)
        self.listener.close()
        for sender in list(self.senders.values()):
            budget = STOP_READ_BUDGET   # a sender still writing fast must not keep us here
            while not sender.eof and budget > 0:
                try:
                    data = sender.sock.recv(READ_SIZE)
                except (BlockingIOError, OSError):
                    break
                budget -= len(data)
                if data:
                    self.take(sender, sender.inbuf + data)
                else:
                    self.end_of_stream(sender)
                while self.queue:
                    self.dispatch()
                    if self.queue:
                        self.step(0.05)
            if not sender.eof:
                # Lines after these are not taken: the sender learns where to resume.
                sender.cut_off = sender.eof = True
                sender.inbuf = b""
                sender.skipping = False
                self.maybe_done(sender)
        deadline = time.monotonic() + STOP_GRACE
        while (self.queue or any(s.outstanding for s in self.senders.values())) \
                and time.monotonic() < deadline:
            self.step(0.05)
        for sender in list(self.senders.values()):
            if not sender.done_sent:    # writers did not report in time
                sender.outbuf += ingestwire.encode_done(sender.lines_taken(), sender.written,
                                                        sender.errors, stopping=True)
                sender.done_sent = True
            sender.sock.setblocking(True)
            sender.sock.settimeout(1.0)
            try:
                sender.sock.sendall(sender.outbuf)
            except OSError:
                pass
            sender.sock.close()
