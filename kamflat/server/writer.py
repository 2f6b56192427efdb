"""A writer process: takes records and appends them to its own flatstore files.

Records reach a writer from two places: chunks of JSON lines that the ingest
process hands over on the writer's data socket, and SIP requests on the shared
UDP sockets (when `listen=` is configured). Each writer has rank 1..children and
so its own files (acc_129.log for rank 1), as Kamailio's SIP workers do.

What the writer promises:
- a chunk is reported back to the ingest process only once all its records were
  handed to the OS by write() (or refused with a reason), in both flush modes: with
  flush=0 the report follows the block write that took its last record (at most
  BUFFER_AGE later), while the writer goes on with the next chunks meanwhile;
- before a report, every file it wrote into is checked against its path: a file
  deleted under the writer (rm -rf of the directory) is noticed, reopened by name,
  and the unreported records are written there again;
- a SIP request's record is written before its reply is sent (the datagrams of one
  wake-up: their records in one write(), then their replies);
- when a write fails (directory gone, not writable, disk full) the record is kept
  and retried, and nothing new is taken meanwhile, so senders are slowed instead
  of records being dropped;
- a `rotate N` on the control socket closes every open file before the answer,
  so the renamed files are complete when the management process replies 200;
- at a stop (SIGTERM, to the ingest process at the same time) it reads every chunk
  the ingest still hands over, until the ingest's `stop`, and writes them; what it
  still cannot write SHUTDOWN_GRACE after that is reported line by line as not
  written, dropped and logged, and the writer exits with status 1.
"""
import collections
import logging
import selectors
import socket
import time

from kamflat.proto import ingest as ingestwire
from kamflat.proto import link
from kamflat.proto.link import Chunk
from kamflat.flatstore.connection import FlatstoreError
from kamflat.server import sipnet
from kamflat.server.child import ChildProcess
from kamflat.server.linksock import PacketReader

log = logging.getLogger("kamflat.writer")

RETRY_INTERVAL = 0.1                  # seconds between attempts while writes fail
SHUTDOWN_GRACE = 5.0                  # how long a failing write may delay a stop (stop_grace)
DATAGRAMS_PER_WAKEUP = 32             # SIP datagrams taken per select() before looking around
BUFFER_AGE = 1.0                      # flush=0: the longest a record waits in memory
REPORT_SEND_TIMEOUT = 5.0             # a report the ingest does not take in time is dropped
STOP_WAIT = 15.0                      # stopping: the longest wait for the ingest's `stop`


class Writer(ChildProcess):
    """One writer process's loop. Built before fork, `run()` in the child."""

    def __init__(self, rank, connection, state, data_sock=None, control_sock=None,
                 udp_socks=(), sip_handler=None, grace=SHUTDOWN_GRACE):
        self.rank = rank
        self.grace = grace
        self.conn = connection
        self.state = state
        self.data_sock = data_sock
        self.data_reader = PacketReader(data_sock) if data_sock is not None else None
        self.control_sock = control_sock
        self.udp_socks = list(udp_socks)
        self.sip = sip_handler
        self.sip_cells = {}                  # see on_datagram
        self.sip_tables = set()              # see write_sip
        self.pending = collections.deque()   # Chunks and SIP record lists not yet written
        self.unsynced = collections.deque()  # Chunks inserted, not yet reported
        self.retry_at = 0.0
        self.next_failure_log = 0.0
        self.last_failure = None
        self.buffered_since = None           # when flush=0 started holding records back
        self.stop_wait = None                # stopping: how long to wait for `stop`
        self.told_stop = False               # the ingest said no more chunks will come
        self.final_deadline = None           # stopping: when to give up on failing writes
        self.not_written = 0                 # records given up at a stop
        self.stopping = False

    # -- main loop ----------------------------------------------------------
    def run(self):
        self.init_signals()
        self.conn.repair_files()     # a predecessor killed mid-write left half a record
        sel = sipnet.selector()     # a datagram wakes one writer, not all of them
        sel.register(self.wake_r, selectors.EVENT_READ, "wake")
        if self.control_sock is not None:
            sel.register(self.control_sock, selectors.EVENT_READ, "control")
        inputs = {s: "udp" for s in self.udp_socks}
        if self.data_sock is not None:
            inputs[self.data_sock] = "data"
            self.data_sock.settimeout(REPORT_SEND_TIMEOUT)   # a report never hangs us
            self.tell_ingest(link.Message("hello", self.rank))   # a writer (re)started
        reading = set()
        while not self.finished():
            want = self.wanted(inputs)
            for sock in reading - want:
                sel.unregister(sock)
            for sock in want - reading:
                sel.register(sock, selectors.EVENT_READ, inputs[sock])
            reading = want
            for key, _ in sel.select(self.next_timeout()):
                if key.data == "wake":
                    self.drain_wakeup()
                elif key.data == "control":
                    self.on_control()
                elif key.data == "data":
                    self.on_data()
                else:
                    self.on_datagram(key.fileobj)
            self.step()
        self.close()
        return 1 if self.not_written else 0

    def wanted(self, inputs):
        """The inputs to read: all while everything taken is written (backpressure);
        once stopping, only the ingest's, whatever is pending, until its `stop`."""
        if self.stopping:
            return {self.data_sock} if self.data_sock is not None and not self.told_stop \
                else set()
        return set() if self.pending else set(inputs)

    def finished(self):
        return self.stopping and self.final_deadline is not None \
            and not (self.pending or self.unsynced)

    def step(self):
        """Write what can be written, report what is in the files, give up when due."""
        now = time.monotonic()
        if self.stopping and self.stop_wait is None:
            # SIGTERM: the ingest process stops too; it hands over what senders had sent
            # and then says `stop`. Without an ingest (or if it never says it): the grace.
            self.stop_wait = now + (STOP_WAIT if self.data_sock is not None else 0.0)
        if self.stop_wait is not None and self.final_deadline is None \
                and now >= self.stop_wait:
            self.final_deadline = now + self.grace
        self.work()
        self.age_out_buffer(now=self.final_deadline is not None)
        self.settle()
        if self.final_deadline is not None and time.monotonic() >= self.final_deadline \
                and (self.pending or self.unsynced):
            self.give_up()

    def next_timeout(self):
        """How long select() may wait: until the next retry of a failed write, or until
        flush=0's buffered records are due; forever when there is nothing to do."""
        due = []
        if self.pending:
            due.append(self.retry_at)
        if self.buffered_since is not None:
            due.append(self.buffered_since + BUFFER_AGE)
        if self.stopping:
            due.append(time.monotonic() + RETRY_INTERVAL)   # deadlines to look at
        return max(0.0, min(due) - time.monotonic()) if due else None

    def age_out_buffer(self, now=False):
        """With flush=0, records wait for a 64 KiB block, but never longer than BUFFER_AGE:
        on a quiet server they would otherwise sit in memory for hours (Kamailio's do).
        now=True: write them at once (a stop)."""
        if self.buffered_since is None and not now:
            if self.conn.buffered:
                self.buffered_since = time.monotonic()
            return
        if not now and time.monotonic() < self.buffered_since + BUFFER_AGE:
            return
        try:
            self.conn.write_buffered()
        except FlatstoreError as exc:
            self.failed(exc, "buffered records kept, retried")
            self.buffered_since = time.monotonic()
            return
        self.buffered_since = time.monotonic() if self.conn.buffered else None

    def close(self):
        try:
            self.conn.close()
        except FlatstoreError as exc:     # only SIP records can be left here
            dropped = self.conn.discard_buffered()
            self.not_written += dropped
            log.error("writer %d: %d buffered records could not be written at stop: %s",
                      self.rank, dropped, exc)
            self.conn.close()

    # -- input --------------------------------------------------------------
    def on_data(self):
        try:
            message = self.data_reader.recv(socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        if message:
            self.take(message)

    def take(self, packet):
        message = link.decode(packet)
        if message.kind == "chunk":
            self.tell_ingest(link.Message("taken", message.number, message.line))
            self.pending.append(Chunk(message.number, message.line, message.body))
        elif message.kind == "marker":
            self.tell_ingest(link.Message("reached"))
        elif message.kind == "flush":
            # A sender waits for its last lines: with flush=0 they would otherwise wait
            # for BUFFER_AGE (everything before this message is inserted by now).
            self.age_out_buffer(now=True)
        elif message.kind == "stop":
            # No more chunks will come: write what is here, and give up on what still
            # cannot be written once the grace is over, so every sender hears exactly.
            self.told_stop = True
            self.final_deadline = time.monotonic() + self.grace
            self.age_out_buffer(now=True)
        else:
            log.warning("writer %d: unexpected %s message from the ingest process",
                        self.rank, message.kind)

    def tell_ingest(self, message):
        try:
            self.data_sock.send(link.encode(message))
        except OSError as exc:     # the ingest process is gone (stopping): nobody to tell
            log.debug("writer %d: could not tell the ingest process %s: %s",
                      self.rank, message.kind, exc)

    def on_datagram(self, sock):
        """Answer and account the datagrams waiting on `sock` (a few per wake-up), with
        the receive loop the tests drive (sipnet.drain)."""
        sipnet.drain(sock, self.sip, self.take_sip_records, self.log_sip_reason,
                     self.log_sip_send_error, DATAGRAMS_PER_WAKEUP)
        cells = self.sip_cells       # this process's counter cells, by the handler's name
        for name, n in self.sip.take_counters().items():
            cell = cells.get(name)
            if cell is None:
                group, _, stat = name.partition(":")
                cell = cells[name] = self.state.cell(group, stat)
            cell[0] += n

    def take_sip_records(self, records):
        """Write the records of the datagrams of one wake-up (before their replies are
        sent). Those that cannot be written yet stay pending (held, or in self.pending)
        and nothing more is taken until they are."""
        records = collections.deque(records)
        if not self.pending:
            # Nothing waits (nearly always): written here, without work()'s loop. When a
            # write fails, the records left take the queue's way: work() tries again
            # at once, and logs and schedules the retries as for any record.
            try:
                self.write_sip(records)
                return
            except FlatstoreError:
                pass
        self.pending.append(records)
        self.work()

    def log_sip_reason(self, reason, addr):
        log.info("writer %d: SIP from %s:%s %s", self.rank, addr[0], addr[1], reason)

    def log_sip_send_error(self, exc, addr):
        log.warning("writer %d: could not send SIP reply to %s: %s", self.rank, addr, exc)

    def on_control(self):
        try:
            packet = self.control_sock.recv(256)
        except BlockingIOError:
            return
        try:
            message = link.decode(packet)
        except link.LinkError:
            message = None
        if message is None or message.kind != "rotate":
            log.warning("writer %d: unknown control message %r", self.rank, packet)
            return
        try:
            self.conn.close_files()
            answer = link.Message("rotated", message.number)
        except FlatstoreError as exc:
            self.state.add("flatstore", "reopen_failures")
            answer = link.Message("failed", message.number, body=str(exc))
        try:
            self.control_sock.send(link.encode(answer))
        except OSError as exc:
            log.warning("writer %d: could not answer rotation: %s", self.rank, exc)

    # -- writing ------------------------------------------------------------
    def failed(self, exc, what):
        now = time.monotonic()
        self.last_failure = exc
        if now >= self.next_failure_log:   # once a few seconds, not per retry
            log.error("writer %d: %s (%s)", self.rank, exc, what)
            self.next_failure_log = now + 5.0

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
                    self.write_sip(item)
            except FlatstoreError as exc:
                self.failed(exc, "records wait and are retried")
                self.retry_at = time.monotonic() + RETRY_INTERVAL
                return
            self.pending.popleft()
        self.retry_at = 0.0

    def write_chunk(self, chunk):
        """Insert the chunk's lines from where it got to. With flush=1 too they are held
        in the connection's buffer and handed to the OS by one write() at the end (the
        chunk is reported only after it). A failed write raises FlatstoreError: the
        lines not inserted stay where they are, those held stay held, and the next call
        goes on from there."""
        conn = self.conn
        conn.hold()
        try:
            if chunk.pos < chunk.redo_until:
                self.rewrite_lines(chunk)
            self.insert_lines(chunk)
        finally:
            conn.hold(False)
        self.write_held(chunk.starts)
        chunk.marks = {table: conn.taken_count(table) for table in chunk.starts}
        self.unsynced.append(chunk)

    def insert_lines(self, chunk):
        """The lines from chunk.pos on, in order; a line that can never be written is
        refused with its reason. (The writer's hot path: one pass, local names.)"""
        conn, starts = self.conn, chunk.starts
        use_table, insert, taken_count = conn.use_table, conn.insert, conn.taken_count
        if chunk.texts is not None:
            lines, decode = chunk.texts, ingestwire.decode_text
        else:
            lines, decode = chunk.lines, ingestwire.decode_line
        pos, end, written, last, table = chunk.pos, len(lines), 0, None, None
        try:
            while pos < end:
                try:
                    table, keys, values = decode(lines[pos])
                    if table != last:
                        use_table(table)
                        if table not in starts:
                            starts[table] = taken_count(table)
                        last = table
                    insert(keys, values)
                except FlatstoreError:
                    self.state.add("flatstore", table + "_failed")
                    raise   # the line stays where it is and is retried
                except (ingestwire.IngestError, ValueError, TypeError) as exc:
                    # A line that can never be written: say why, go on with the next.
                    chunk.refuse(pos, str(exc))
                else:
                    written += 1
                pos += 1
        finally:
            chunk.pos = pos
            chunk.written += written

    def rewrite_lines(self, chunk):
        """Lines before redo_until were inserted once into a file that was deleted since:
        insert those of the deleted tables again (the others are where they were)."""
        conn = self.conn
        while chunk.pos < chunk.redo_until:
            if chunk.pos not in chunk.bad:
                table, keys, values = ingestwire.decode_line(chunk.lines[chunk.pos])
                if table in chunk.redo_tables:
                    conn.use_table(table)
                    chunk.starts.setdefault(table, conn.taken_count(table))
                    try:
                        conn.insert(keys, values)
                    except FlatstoreError:
                        self.state.add("flatstore", table + "_failed")
                        raise
            chunk.pos += 1
        chunk.redo_until, chunk.redo_tables = 0, frozenset()

    def write_sip(self, records):
        """SIP records (a deque of (table, values), emptied as they are inserted). With
        flush=1 too they are held and handed to the OS by one write() at the end: a
        wake-up's datagrams are answered after it. A failed write raises FlatstoreError:
        the records not inserted stay in `records`, those held stay held, and the next
        call goes on from there (the held ones go with the next write)."""
        conn = self.conn
        # every table SIP wrote into: a retry (records all held) counts its failure too
        self.sip_tables.update(table for table, _ in records)
        conn.hold()
        try:
            self.write_records(records)
        finally:
            conn.hold(False)
        self.write_held(self.sip_tables)

    def write_held(self, tables):
        """flush=1: hand what hold() kept to the OS in one write(); a failure counts
        <table>_failed for each of `tables` left with records not written, and raises."""
        conn = self.conn
        if not conn.flush:
            return
        try:
            conn.write_buffered()
        except FlatstoreError:
            for table in tables:
                if conn.taken_count(table) > conn.written_count(table):
                    self.state.add("flatstore", table + "_failed")
            raise

    def write_records(self, records):
        while records:
            table, values = records[0]
            self.conn.use_table(table)
            try:
                self.conn.insert(None, values)
            except FlatstoreError:
                self.state.add("flatstore", table + "_failed")
                raise
            records.popleft()

    # -- reporting ----------------------------------------------------------
    def settle(self):
        """Report the chunks whose records are all in the OS, once their files are
        found still at their paths."""
        conn = self.conn
        ready = 0
        for chunk in self.unsynced:
            if any(conn.written_count(t) < mark for t, mark in chunk.marks.items()):
                break
            ready += 1
        if not ready:
            return
        found = conn.check_files()
        if found:
            self.files_replaced(found)
            if "deleted" in found.values():
                return      # what was written is gone with the file: written again first
        for _ in range(ready):
            chunk = self.unsynced.popleft()
            self.state.add("ingest", "lines", len(chunk.lines))
            if chunk.error_count:
                self.state.add("ingest", "errors", chunk.error_count)
            self.tell_ingest(chunk.report())

    def files_replaced(self, found):
        deleted = sorted(t for t, where in found.items() if where == "deleted")
        for table, where in sorted(found.items()):
            self.state.add("flatstore", table + "_reopened")
            log.log(logging.WARNING if where == "deleted" else logging.INFO,
                    "writer %d: %s was %s under the writer; reopening it by name%s",
                    self.rank, self.conn.path(table), where,
                    " and writing the records not yet reported there again"
                    if where == "deleted" else "")
        if not deleted:
            return
        chunks = list(self.unsynced)
        head = self.pending[0] if self.pending else None
        if isinstance(head, Chunk) and head.pos:
            self.pending.popleft()
            chunks.append(head)
        for table in deleted:
            firsts = [c.starts[table] for c in chunks if table in c.starts]
            if firsts:   # records from here on were counted, and will be counted again
                self.conn.uncount(table, self.conn.written_count(table) - min(firsts))
            dropped = self.conn.discard_buffered(table)   # inserted again as well
            log.debug("writer %d: %d buffered %s records dropped for reinsertion",
                      self.rank, dropped, table)
        for chunk in chunks:
            chunk.redo(deleted)
        self.unsynced.clear()
        self.pending.extendleft(reversed(chunks))

    def give_up(self):
        """A stop that cannot write everything: report each chunk's lines that are not in
        the file as not written (exactly), drop them, log how many and from whom."""
        reason = "not written: %s (the server stopped)" % (
            self.last_failure or "the writer stopped before it got to them")
        conn = self.conn
        chunks = list(self.unsynced) + [p for p in self.pending if isinstance(p, Chunk)]
        sip = sum(len(p) for p in self.pending if not isinstance(p, Chunk))
        lines = 0
        for chunk in chunks:
            unwritten = chunk.unwritten(conn.written_count)
            lines += len(unwritten)
            self.tell_ingest(chunk.report(unwritten, reason))
        held = conn.discard_buffered()
        if conn.flush and self.pending and not isinstance(self.pending[0], Chunk):
            # a failed SIP write holds its records (flush=1: then nothing else is held,
            # no chunk was taken since)
            sip += held
        self.unsynced.clear()
        self.pending.clear()
        self.not_written += lines + sip
        log.error("writer %d: stopping with %d records that could not be written (%d lines "
                  "from %d ingest connections: %s; %d SIP records): %s", self.rank,
                  lines + sip, lines, len({c.conn_id for c in chunks}),
                  ", ".join(sorted({"%#x" % c.conn_id for c in chunks})) or "-", sip,
                  self.last_failure)
