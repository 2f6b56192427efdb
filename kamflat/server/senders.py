"""The ingest's senders: one connection each (Sender, whose life is the SENDER_STATES
table), and how many the ingest takes
at once (AcceptGate, a part of Ingest): the ingest_max_connections cap, running out of
descriptors (EMFILE/ENFILE never kill the process: it stops accepting, logs once, and
accepts again when a descriptor frees), and senders idle past ingest_idle_timeout.
"""
import errno
import logging
import os
import selectors
import socket
import struct
import time

from kamflat.proto import ingest as ingestwire

log = logging.getLogger("kamflat.server.ingest")

MAX_CONNECTIONS = 1024    # ingest_max_connections: senders connected at once
IDLE_TIMEOUT = 60.0       # ingest_idle_timeout: a sender silent this long is closed
EVICT_IDLE = 1.0          # at the cap, a sender silent this long makes room for a new one
ACCEPT_RETRY = 0.5        # out of descriptors: accept again after this, or when one closes
# Out of descriptors or memory: not the new sender's fault, and nothing to kill us for.
ACCEPT_EXHAUSTED = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_PEERCRED = struct.Struct("3i")   # struct ucred: pid, uid, gid


# The life of one sender, as a table (h11 keeps a connection's states so):
# state -> {event: next state}. An event a state does not list is a bug, not a sender's
# doing, and raises.
#   reading   its lines are taken
#   skipping  inside a line longer than MAX_LINE: its bytes are dropped up to its newline
#   ended     it closed its side; its last chunks wait for the writers' reports
#   cut_off   a stop ended the reading before the sender's end; its chunks wait likewise
#   done      its final answer is composed; the connection closes once that is sent
# Events: long_line, newline (the long line's end), eof, cut (a stop read what it could),
# settled (reading is over and nothing is outstanding), stop (a stop's grace is over).
SENDER_STATES = {
    "reading": {"long_line": "skipping", "eof": "ended", "cut": "cut_off", "stop": "done"},
    "skipping": {"newline": "reading", "eof": "ended", "cut": "cut_off", "stop": "done"},
    "ended": {"settled": "done", "stop": "done"},
    "cut_off": {"settled": "done", "stop": "done"},
    "done": {},
}
READING = ("reading", "skipping")      # the states that still take bytes from the sender


class Sender:
    """One connection on the ingest socket: its state (SENDER_STATES), its buffers, and
    the counts its final answer adds up."""

    def __init__(self, conn_id, sock):
        self.id = conn_id
        self.sock = sock
        self.state = "reading"
        self.inbuf = b""
        self.outbuf = bytearray()
        self.next_line = 1
        self.active = time.monotonic()   # last bytes in or out, or last report
        self.outstanding = 0      # chunks handed to writers and not yet reported
        self.written = 0
        self.errors = 0
        self.not_written = 0      # lines a stopping writer could not write
        try:
            self.pid = _PEERCRED.unpack(sock.getsockopt(
                socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))[0]
        except OSError:
            self.pid = 0

    def goto(self, event):
        """Take `event`; returns the state it leads to."""
        try:
            self.state = SENDER_STATES[self.state][event]
        except KeyError:
            raise RuntimeError("ingest: %s in state %s cannot take %s"
                               % (self.describe(), self.state, event)) from None
        return self.state

    @property
    def reading(self):
        return self.state in READING

    @property
    def stopping(self):
        """Whether its final answer says `stopping`: the server ended it, not the sender
        (cut off, or its lines not all taken to its end)."""
        return self.state != "ended"

    def describe(self):
        return "sender pid %d (connection %#x)" % (self.pid, self.id)

    def lines_taken(self):
        return self.next_line - 1

    def error(self, line_no, message):
        self.errors += 1
        self.outbuf += ingestwire.encode_error(line_no, message)


class AcceptGate:
    """Ingest's accepting: needs its listener, sel, senders, state, counter and drop()."""

    def on_accept(self, listener, events):
        if len(self.senders) >= self.max_connections and not self.evict_idle():
            self.pause_accepting("%d connections open (ingest_max_connections)"
                                 % len(self.senders))
            return
        try:
            sock, _ = listener.accept()
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno not in ACCEPT_EXHAUSTED:
                log.warning("ingest: accept failed: %s", exc)
                return
            if not self.evict_idle():
                self.pause_accepting(exc.strerror)
            return
        if self.exhausted_logged:
            log.info("ingest: accepting connections again")
            self.exhausted_logged = False
        sock.setblocking(False)
        self.counter += 1
        sender = Sender((os.getpid() << 32) | self.counter, sock)
        self.senders[sender.id] = sender
        self.by_fd[sock.fileno()] = sender
        self.sel.register(sock, selectors.EVENT_READ, self.on_sender)
        self.state.add("ingest", "connections")

    def pause_accepting(self, why):
        """Out of descriptors (or at the cap): stop accepting until a sender closes or
        ACCEPT_RETRY passed; new senders wait in the listen backlog meanwhile."""
        if not self.exhausted_logged:
            log.error("ingest: not accepting new connections for now: %s (%d open); "
                      "accepting again when one closes", why, len(self.senders))
            self.exhausted_logged = True
            self.state.add("ingest", "accept_paused")
        self.accept_again = time.monotonic() + ACCEPT_RETRY
        self._set_accepting(False)

    def _set_accepting(self, on):
        if on != self.accepting and not (on and self.stopping):
            (self.sel.register(self.listener, selectors.EVENT_READ, self.on_accept) if on
             else self.sel.unregister(self.listener))
            self.accepting = on

    def idle(self, sender, now):
        """How long `sender` has been idle, 0 while it has anything in progress."""
        if sender.outstanding or sender.outbuf or sender.inbuf or not sender.reading:
            return 0.0
        return now - sender.active

    def evict_idle(self):
        """Close the longest-idle sender if it has been idle EVICT_IDLE; True if one was."""
        now = time.monotonic()
        sender = max(self.senders.values(), key=lambda s: self.idle(s, now), default=None)
        if sender is None or self.idle(sender, now) < EVICT_IDLE:
            return False
        self.close_idle(sender, "making room for a new connection")
        return True

    def close_idle(self, sender, why):
        log.info("ingest: closing %s, idle for %.0f s: %s", sender.describe(),
                 time.monotonic() - sender.active, why)
        self.state.add("ingest", "idle_closed")
        self.drop(sender)

    def close_idle_senders(self):
        now = time.monotonic()
        for sender in [s for s in self.senders.values()
                       if self.idle(s, now) >= self.idle_timeout]:
            self.close_idle(sender, "ingest_idle_timeout")
