"""A writer process: takes records and appends them to its own flatstore files.

Records reach a writer from two places: chunks of JSON lines that the ingest
process hands over on the writer's data socket, and SIP requests on the shared
UDP sockets (when `listen=` is configured). Each writer has rank 1..children and
so its own files (acc_129.log for rank 1), as Kamailio's SIP workers do.

What the writer promises:
- a chunk is reported back to the ingest process only once all its records are
  written (or refused with a reason), so "done" means on disk;
- when a write fails (directory gone, not writable, disk full) the record is kept
  and retried, and nothing new is taken meanwhile, so senders are slowed instead
  of records being dropped;
- a `rotate N` on the control socket closes every open file before the answer,
  so the renamed files are complete when the management process replies 200;
- on SIGTERM it takes whatever is already queued for it, writes it, flushes and
  closes its files before exiting.
"""
import collections
import json
import logging
import os
import selectors
import signal
import socket
import struct
import time

from kamflat.proto import ingest as ingestwire
from kamflat.flatstore.connection import FlatstoreError
from kamflat.server import sipnet

log = logging.getLogger("kamflat.writer")

CHUNK_HEADER = struct.Struct("!QQ")   # connection id, number of the chunk's first line
MARKER = CHUNK_HEADER.pack(0, 0)      # not a chunk: "tell me when you get here"
RETRY_INTERVAL = 0.1                  # seconds between attempts while writes fail
SHUTDOWN_GRACE = 5.0                  # how long a failing write may delay a stop
MAX_REPORT_ERRORS = 1000              # per chunk; the rest are counted, not described
DATAGRAMS_PER_WAKEUP = 32             # SIP datagrams taken per select() before looking around
BUFFER_AGE = 1.0                      # flush=0: the longest a record waits in memory


class Chunk:
    """Lines from one ingest connection, worked through record by record."""

    def __init__(self, conn_id, first_line, payload):
        self.conn_id = conn_id
        self.first_line = first_line
        self.lines = payload.split(b"\n")
        if self.lines and self.lines[-1] == b"":
            self.lines.pop()
        self.pos = 0
        self.written = 0
        self.errors = []
        self.error_count = 0

    def report(self):
        return {"c": self.conn_id, "n": len(self.lines), "w": self.written,
                "e": self.errors, "x": self.error_count}


class Writer:
    """One writer process's loop. Built before fork, `run()` in the child."""

    def __init__(self, rank, connection, state, data_sock=None, control_sock=None,
                 udp_socks=(), sip_handler=None):
        self.rank = rank
        self.conn = connection
        self.state = state
        self.data_sock = data_sock
        self.control_sock = control_sock
        self.udp_socks = list(udp_socks)
        self.sip = sip_handler
        self.pending = collections.deque()   # Chunks and SIP record lists not yet written
        self.retry_at = 0.0
        self.next_failure_log = 0.0
        self.buffered_since = None           # when flush=0 started holding records back
        self.stopping = False

    # -- process setup ------------------------------------------------------
    def init_signals(self):
        # Ctrl-C reaches the whole process group: the master decides when writers stop.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, self.handle_term)
        # The handler only sets a flag; this pipe wakes select() up to notice it.
        self.wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)

    def handle_term(self, signum, frame):
        self.stopping = True

    # -- main loop ----------------------------------------------------------
    def run(self):
        self.init_signals()
        sel = sipnet.selector()     # a datagram wakes one writer, not all of them
        sel.register(self.wake_r, selectors.EVENT_READ, "wake")
        if self.control_sock is not None:
            sel.register(self.control_sock, selectors.EVENT_READ, "control")
        inputs = [(s, "udp") for s in self.udp_socks]
        if self.data_sock is not None:
            inputs.append((self.data_sock, "data"))
            self.tell_ingest({"hello": self.rank})   # the ingest learns a writer (re)started
        reading = False
        while not self.stopping:
            # Take new input only when everything taken so far is written.
            want = not self.pending
            if want != reading:
                for sock, tag in inputs:
                    (sel.register(sock, selectors.EVENT_READ, tag) if want
                     else sel.unregister(sock))
                reading = want
            timeout = self.next_timeout()
            for key, _ in sel.select(timeout):
                if key.data == "wake":
                    _drain(self.wake_r)
                elif key.data == "control":
                    self.on_control()
                elif key.data == "data":
                    self.on_data()
                else:
                    self.on_datagram(key.fileobj)
            self.work()
            self.age_out_buffer()
        self.shutdown()
        return 0

    def next_timeout(self):
        """How long select() may wait: until the next retry of a failed write, or until
        flush=0's buffered records are due; forever when there is nothing to do."""
        due = []
        if self.pending:
            due.append(self.retry_at)
        if self.buffered_since is not None:
            due.append(self.buffered_since + BUFFER_AGE)
        return max(0.0, min(due) - time.monotonic()) if due else None

    def age_out_buffer(self):
        """With flush=0, records wait for a 64 KiB block, but never longer than BUFFER_AGE:
        on a quiet server they would otherwise sit in memory for hours (Kamailio's do)."""
        if self.buffered_since is None:
            if self.conn.buffered:
                self.buffered_since = time.monotonic()
            return
        if time.monotonic() < self.buffered_since + BUFFER_AGE:
            return
        try:
            self.conn.write_buffered()
        except FlatstoreError as exc:
            log.error("writer %d: %s (buffered records kept, retried)", self.rank, exc)
            self.buffered_since = time.monotonic()
            return
        self.buffered_since = time.monotonic() if self.conn.buffered else None

    def shutdown(self):
        """Write everything queued for this writer, then close the files."""
        if self.data_sock is not None:
            self.data_sock.setblocking(False)
            while True:
                try:
                    message = self.data_sock.recv(1 << 21)
                except (BlockingIOError, OSError):
                    break
                if not message:
                    break
                self.take_chunk(message)
        deadline = time.monotonic() + SHUTDOWN_GRACE
        while self.pending and time.monotonic() < deadline:
            self.work()
            if self.pending:
                time.sleep(RETRY_INTERVAL)
        if self.pending:
            lost = sum(len(p.lines) - p.pos if isinstance(p, Chunk) else len(p)
                       for p in self.pending)
            log.error("writer %d: stopping with %d records that could not be written",
                      self.rank, lost)
        try:
            self.conn.close()
        except FlatstoreError as exc:
            log.error("writer %d: could not write buffered records at stop: %s", self.rank, exc)

    # -- input --------------------------------------------------------------
    def on_data(self):
        try:
            message = self.data_sock.recv(1 << 21)
        except BlockingIOError:
            return
        if message:
            self.take_chunk(message)

    def take_chunk(self, message):
        if message == MARKER:
            self.tell_ingest({"marker": 1})
            return
        conn_id, first_line = CHUNK_HEADER.unpack_from(message)
        self.tell_ingest({"taken": [conn_id, first_line]})
        self.pending.append(Chunk(conn_id, first_line, message[CHUNK_HEADER.size:]))

    def tell_ingest(self, report):
        try:
            self.data_sock.send(json.dumps(report).encode())
        except OSError as exc:     # the ingest process is gone (stopping): nobody to tell
            log.debug("writer %d: could not tell the ingest process %s: %s",
                      self.rank, report, exc)

    def on_datagram(self, sock):
        """Answer and account the datagrams waiting on `sock` (a few per wake-up), with
        the receive loop the tests drive (sipnet.drain)."""
        sipnet.drain(sock, self.sip, self.take_sip_records, self.log_sip_reason,
                     self.log_sip_send_error, DATAGRAMS_PER_WAKEUP)
        for name, n in self.sip.take_counters().items():
            group, _, stat = name.partition(":")
            self.state.add(group, stat, n)

    def take_sip_records(self, records):
        """Write one request's records (before its reply is sent); False when they
        could not be written yet: they stay pending and nothing more is taken."""
        self.pending.append(collections.deque(records))
        self.work()
        return not self.pending

    def log_sip_reason(self, reason, addr):
        log.info("writer %d: SIP from %s:%s %s", self.rank, addr[0], addr[1], reason)

    def log_sip_send_error(self, exc, addr):
        log.warning("writer %d: could not send SIP reply to %s: %s", self.rank, addr, exc)

    def on_control(self):
        try:
            message = self.control_sock.recv(256)
        except BlockingIOError:
            return
        verb, _, arg = message.decode(errors="replace").partition(" ")
        if verb != "rotate":
            log.warning("writer %d: unknown control message %r", self.rank, message)
            return
        try:
            self.conn.close_files()
            answer = "rotated %s" % arg
        except FlatstoreError as exc:
            self.state.add("flatstore", "reopen_failures")
            answer = "failed %s %s" % (arg, exc)
        try:
            self.control_sock.send(answer.encode())
        except OSError as exc:
            log.warning("writer %d: could not answer rotation: %s", self.rank, exc)

    # -- writing ------------------------------------------------------------
    def work(self):
        """Write pending records in order until done or a write fails."""
        if self.pending and time.monotonic() < self.retry_at:
            return
        while self.pending:
            item = self.pending[0]
            try:
                if isinstance(item, Chunk):
                    self.write_chunk(item)
                else:
                    self.write_records(item)
            except FlatstoreError as exc:
                now = time.monotonic()
                if now >= self.next_failure_log:   # once a few seconds, not per retry
                    log.error("writer %d: %s (records wait and are retried)", self.rank, exc)
                    self.next_failure_log = now + 5.0
                self.retry_at = now + RETRY_INTERVAL
                return
            self.pending.popleft()
        self.retry_at = 0.0

    def write_chunk(self, chunk):
        conn, lines, state = self.conn, chunk.lines, self.state
        written = collections.Counter()     # per table; added to the shared counters once
        try:
            while chunk.pos < len(lines):
                try:
                    table, keys, values = ingestwire.decode_line(lines[chunk.pos])
                    conn.use_table(table)
                    conn.insert(keys, values)
                except FlatstoreError:
                    state.add("flatstore", table + "_failed")
                    raise   # the line stays where it is and is retried
                except (ingestwire.IngestError, ValueError, TypeError) as exc:
                    # A line that can never be written: say why, go on with the next.
                    chunk.error_count += 1
                    if len(chunk.errors) < MAX_REPORT_ERRORS:
                        chunk.errors.append([chunk.first_line + chunk.pos, str(exc)])
                else:
                    chunk.written += 1
                    written[table] += 1
                chunk.pos += 1
        finally:
            for table, n in written.items():
                state.add("flatstore", table + "_written", n)
        state.add("ingest", "lines", len(lines))
        if chunk.error_count:
            state.add("ingest", "errors", chunk.error_count)
        self.tell_ingest(chunk.report())

    def write_records(self, records):
        while records:
            table, values = records[0]
            self.conn.use_table(table)
            try:
                self.conn.insert(None, values)
            except FlatstoreError:
                self.state.add("flatstore", table + "_failed")
                raise
            self.state.add("flatstore", table + "_written")
            records.popleft()


def _drain(fd):
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def seqpacket_pair(buffer=1 << 21):
    """A socketpair that keeps message boundaries, with room for big chunks."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for s in (a, b):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
    return a, b
