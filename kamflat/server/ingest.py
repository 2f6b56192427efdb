"""The ingest process: accepts senders on the ingest socket and spreads their lines.

It does no per-record work. It cuts each connection's stream at line ends into
chunks (up to 64 KiB), numbers them by their first line, and hands each chunk to
whichever writer can take it (round robin over the writers' data sockets). When
every writer is full it stops reading from senders, so the kernel slows them down:
backpressure, never a drop. Writers report each chunk back once it is in the OS;
the reports carry the errors, which go back to the sender with their line numbers.
The messages and the book of where each chunk is are kamflat.proto.link's; the
senders and how many are taken at once, kamflat.server.senders.

At a stop it takes what senders already sent, hands it over, tells every writer
`stop` (no more chunks: write or give up within the grace), waits for the reports,
tells each sender exactly which of its lines were written, and removes the ingest
socket (so does the master; this covers a master killed with -9).
"""
import collections
import logging
import os
import selectors
import socket
import time

from kamflat.proto import ingest as ingestwire
from kamflat.proto import link
from kamflat.server.child import ChildProcess
from kamflat.server.senders import IDLE_TIMEOUT, MAX_CONNECTIONS, AcceptGate
from kamflat.server.linksock import PacketReader

log = logging.getLogger("kamflat.server.ingest")

READ_SIZE = 1 << 16
MAX_OUTPUT = 1 << 20      # error replies a sender has not read yet; past this, stop reading it
STOP_GRACE = 10.0         # how long a stop waits for writers to report outstanding chunks
STOP_READ_BUDGET = 1 << 22  # at a stop, bytes still read from each sender (what it had sent)
FINAL_SEND_TIMEOUT = 5.0  # a stop's last answers (line errors included) to one sender


class Ingest(ChildProcess, AcceptGate):
    def __init__(self, listener, writer_socks, state, path=None, ident=None,
                 grace=STOP_GRACE, max_connections=MAX_CONNECTIONS,
                 idle_timeout=IDLE_TIMEOUT):
        """path, ident: the ingest socket's path and (st_dev, st_ino), removed at a stop
        if it is still that socket. grace: how long a stop waits for the writers."""
        self.grace = grace
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.accepting = True
        self.accept_again = None        # paused: when to try accept() again
        self.exhausted_logged = False   # one log line per shortage, not per attempt
        self.listener = listener
        self.path, self.ident = path, ident
        self.writers = list(writer_socks)
        self.state = state
        self.senders = {}                      # connection id -> Sender
        self.by_fd = {}                        # socket fd -> Sender
        self.queue = collections.deque()      # chunks waiting for a writer with room
        self.ledger = link.Ledger([w.fileno() for w in self.writers])
        self.by_writer_fd = {w.fileno(): w for w in self.writers}
        self.readers = {w.fileno(): PacketReader(w) for w in self.writers}
        self.next_writer = 0
        self.counter = 0
        self.stopping = False
        self.flush_due = False      # a sender ended its stream: tell the writers `flush`
        self.sel = selectors.DefaultSelector()

    def run(self):
        self.init_signals()
        self.sel.register(self.wake_r, selectors.EVENT_READ, None)
        self.setup()
        while not self.stopping:
            self.step(self.next_timeout())
            self.drain_wakeup()
        self.stop()
        return 0

    def setup(self):
        """Listen and hear the writers (the loop's part of run())."""
        self.listener.setblocking(False)
        self.sel.register(self.listener, selectors.EVENT_READ, self.on_accept)
        for w in self.writers:
            w.setblocking(False)
            self.sel.register(w, selectors.EVENT_READ, self.on_report)

    def step(self, timeout):
        for key, events in self.sel.select(timeout):
            if key.data is None:
                continue
            key.data(key.fileobj, events)
        self.dispatch()
        if self.flush_due and not self.queue:
            self.tell_flush()
        self.update_interest()
        if self.accept_again is not None and time.monotonic() >= self.accept_again:
            self.accept_again = None
            self._set_accepting(True)
        if self.idle_timeout and self.senders:
            self.close_idle_senders()

    def next_timeout(self):
        due = [self.accept_again] if self.accept_again is not None else []
        if self.senders:
            due.append(time.monotonic() + 1.0)    # idle senders are looked at each second
        return max(0.0, min(due) - time.monotonic()) if due else None

    # -- senders ------------------------------------------------------------
    def on_sender(self, sock, events):
        sender = self.by_fd.get(sock.fileno())
        if sender is None:
            return      # dropped earlier in this same turn of select()
        if events & selectors.EVENT_WRITE:
            self.flush_output(sender)
        # Read only in a reading state: a stop's turns of select() can still report a
        # sender whose end was read a moment ago (its interest changes after them).
        if events & selectors.EVENT_READ and sender.id in self.senders and sender.reading:
            self.read_sender(sender)

    def read_sender(self, sender):
        sender.active = time.monotonic()
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
        self.flush_due = True           # flush=0 writers: write what they hold back
        if sender.state == "skipping":  # the too-long last line ends here
            sender.next_line += 1
        sender.goto("eof")
        if sender.inbuf:                # a last line without its newline still counts
            self.take(sender, sender.inbuf + b"\n")
        else:
            self.maybe_done(sender)

    def take(self, sender, data):
        if sender.state == "skipping":
            cut = data.find(b"\n")
            if cut < 0:
                sender.inbuf = b""
                return
            data = data[cut + 1:]
            sender.goto("newline")
            sender.next_line += 1
        complete, sender.inbuf = ingestwire.split_lines(data)
        if len(sender.inbuf) > ingestwire.MAX_LINE:
            # Too long to ever be a record: refuse it now instead of buffering it.
            line_no = sender.next_line + complete.count(b"\n")
            sender.error(line_no, "line longer than %d bytes" % ingestwire.MAX_LINE)
            self.state.add("ingest", "errors")
            sender.inbuf = b""
            sender.goto("long_line")
        if complete:
            self.queue.append((sender, link.chunk(sender.id, sender.next_line, complete)))
            sender.outstanding += 1
            sender.next_line += complete.count(b"\n")
        self.maybe_done(sender)

    def maybe_done(self, sender):
        if sender.state in ("ended", "cut_off") and not sender.outstanding:
            self.compose_done(sender, "settled")
            self.flush_output(sender)

    def compose_done(self, sender, event):
        """The final answer, once (`event`: settled, or a stop's grace is over)."""
        if sender.state == "done":
            return
        stopping = sender.stopping
        sender.goto(event)
        if sender.not_written:
            log.error("ingest: %d lines from %s were not written (the writers could not "
                      "write them before the stop); the sender was told which",
                      sender.not_written, sender.describe())
        sender.outbuf += ingestwire.encode_done(sender.lines_taken(), sender.written,
                                                sender.errors, stopping=stopping)

    def flush_output(self, sender):
        while sender.outbuf:
            try:
                n = sender.sock.send(sender.outbuf)
            except BlockingIOError:
                return
            except OSError as exc:
                log.info("ingest: could not answer %s: %s", sender.describe(), exc)
                sender.outbuf.clear()
                break
            del sender.outbuf[:n]
        if sender.state == "done":
            self.drop(sender)

    def drop(self, sender):
        self.senders.pop(sender.id, None)
        self.by_fd.pop(sender.sock.fileno(), None)
        try:
            self.sel.unregister(sender.sock)
        except (KeyError, ValueError):
            pass
        close_quietly(sender.sock)
        if not self.accepting:     # a descriptor is free again
            self.accept_again = None
            self._set_accepting(True)

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
                self.ledger.hand(w.fileno(), link.chunk_key(message), (sender, message))
                break
            else:
                return      # every writer is full: wait until one has room

    def tell_flush(self):
        """After the last chunk of a sender that ended its stream: every writer writes what
        flush=0 holds back now, so the sender's answer need not wait a second for it."""
        self.flush_due = False
        for w in self.writers:
            try:
                w.send(link.FLUSH)
            except BlockingIOError:
                self.flush_due = True    # its queue is full: again on the next turn
            except OSError:
                pass                     # the writer is gone: nobody to tell

    def refuse_chunk(self, sender, message, reason):
        _, first_line = link.chunk_key(message)
        count = link.chunk_line_count(message)
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
                    packet = self.readers[writer.fileno()].recv()
                except BlockingIOError:
                    break
                self.take_report(writer.fileno(), link.decode(packet))

    def take_report(self, fd, message):
        kind = message.kind
        if kind == "taken":              # the writer took this chunk
            lost = self.ledger.take(fd, message.key)
        elif kind == "reached":          # everything handed before the marker was taken
            lost = self.ledger.reached(fd)
        elif kind == "hello":            # a (re)started writer: its predecessor's chunks
            lost = self.ledger.hello(fd)
            if lost:
                log.warning("ingest: writer %d restarted holding %d chunks not reported; "
                            "their lines are refused to their senders", message.number,
                            len(lost))
            try:
                self.by_writer_fd[fd].send(link.MARKER)
            except OSError:
                pass        # its queue is full: the next chunk it takes tells what was lost
            else:
                self.ledger.hand(fd, link.MARKER_KEY, None)
        elif kind == "report":
            entry = self.ledger.report(fd, message.key)
            if entry is not None:
                self.reported(entry.item[0], message.body)
            lost = []
        else:
            log.warning("ingest: unexpected %s message from a writer", kind)
            lost = []
        for entry in lost:
            self.lost(entry.item)

    def reported(self, sender, report):
        if sender.id not in self.senders:
            return          # the sender went away; the records are written all the same
        sender.outstanding -= 1
        sender.written += report.written
        for line_no, message in report.errors:
            sender.error(line_no, message)
        sender.errors += report.error_count - len(report.errors)
        for first, last in report.unwritten:
            for line_no in range(first, last + 1):
                sender.error(line_no, report.reason)
        if report.unwritten:
            count = report.unwritten_count()
            sender.not_written += count
            self.state.add("ingest", "errors", count)
        self.maybe_done(sender)
        self.flush_output(sender)

    def lost(self, item):
        sender, message = item
        if sender is not None and sender.id in self.senders:
            self.refuse_chunk(sender, message, "the writer died while writing these lines; "
                                               "some of them may be in the file")

    def update_interest(self):
        """Read senders only while chunks can move on; write to those with output."""
        room = not self.queue and not self.stopping   # a stop reads senders by itself
        now = time.monotonic()
        for sender in list(self.senders.values()):
            if not room:
                sender.active = now     # not reading it is our doing, not its idleness
            events = 0
            if room and sender.reading and len(sender.outbuf) < MAX_OUTPUT:
                events |= selectors.EVENT_READ
            if sender.outbuf:
                events |= selectors.EVENT_WRITE
            self._interest(sender.sock, events, self.on_sender)
        for w in self.writers:
            self._interest(w, selectors.EVENT_READ | (selectors.EVENT_WRITE if self.queue else 0),
                           self.on_report)

    def _interest(self, fileobj, events, callback):
        try:
            # Looked up by number: the KeyError of an unregistered socket would otherwise
            # be formatted with the socket's repr (getsockname, getpeername) every turn.
            current = self.sel.get_key(fileobj.fileno()).events
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
        self._set_accepting(False)
        self.stopping = True
        self.listener.close()
        deadline = time.monotonic() + self.grace
        for sender in list(self.senders.values()):
            self.read_at_stop(sender, deadline)
        told = set()     # writers told `stop`, after their last chunk
        while time.monotonic() < deadline:
            if not self.queue:
                self.tell_stop(told)
            if not (self.queue or any(s.outstanding for s in self.senders.values())):
                break
            self.step(0.05)
        self.remove_socket()
        self.give_up()
        for sender in list(self.senders.values()):
            # give_up settled every chunk: the answer adds up
            self.compose_done(sender, "stop")
            sender.sock.settimeout(FINAL_SEND_TIMEOUT)
            try:
                sender.sock.sendall(sender.outbuf)
            except OSError as exc:
                log.warning("ingest: could not give %s its last answers: %s",
                            sender.describe(), exc)
            close_quietly(sender.sock)

    def read_at_stop(self, sender, deadline):
        budget = STOP_READ_BUDGET   # a sender still writing fast must not keep us here
        while sender.reading and budget > 0 and time.monotonic() < deadline:
            try:
                data = sender.sock.recv(READ_SIZE)
            except (BlockingIOError, OSError):
                break
            budget -= len(data)
            if data:
                self.take(sender, sender.inbuf + data)
            else:
                self.end_of_stream(sender)
            while self.queue and time.monotonic() < deadline:
                self.dispatch()
                if self.queue:
                    self.step(0.05)
        if sender.reading:
            # Lines after these are not taken: the sender learns where to resume.
            sender.goto("cut")
            sender.inbuf = b""
            self.maybe_done(sender)

    def give_up(self):
        """The stop's grace is over: refuse, by line, what no writer reported, so every
        sender's answer still adds up (written + refused = lines taken)."""
        while self.queue:
            sender, message = self.queue.popleft()
            self.refuse_chunk(sender, message, "not written: the server stopped before a "
                                               "writer took these lines")
        for fd in self.ledger.handed:
            for entry in self.ledger.abandon(fd):
                if entry.item[0].id in self.senders:
                    self.refuse_chunk(*entry.item, "the server stopped before the writer "
                                      "reported these lines; some of them may be in the file")

    def tell_stop(self, told):
        for w in self.writers:
            if w.fileno() not in told:
                try:
                    w.send(link.STOP)
                except BlockingIOError:
                    continue     # its queue is full: again on the next turn
                except OSError:
                    pass         # the writer is gone: nobody to tell
                told.add(w.fileno())

    def remove_socket(self):
        """Remove the ingest socket if it is still ours (not one a new server made)."""
        if self.path is None:
            return
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self.ident:
                os.unlink(self.path)
        except OSError:
            pass


def close_quietly(sock):
    """Close a sender that may still be sending: refuse its further bytes (it gets EPIPE)
    and drop those already here first, as closing with unread bytes would reset the
    connection, and the sender could lose the answers it has not read yet."""
    try:
        sock.shutdown(socket.SHUT_RD)
        sock.setblocking(False)
        while sock.recv(1 << 16):
            pass
    except OSError:
        pass
    sock.close()
