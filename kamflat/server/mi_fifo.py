"""The classic MI FIFO server: Kamailio 3.3's mi_fifo, without its stalls.

IO only: the grammar and reply framing are in `proto/mi.py`, the commands in
`mgmt/mi_commands.py`, the way from a parsed request to its client's reply FIFO in
`fiforeply.py` (shared with the JSON-RPC FIFO: its docstring has the timeouts).
One thread runs `serve()`, a non-blocking event loop:

- The server FIFO is held open O_RDWR|O_NONBLOCK, so writers coming and going
  never cause EOF churn. Every byte read goes through one `MIParser` (the FIFO is
  one stream shared by all clients; `mi.py` explains how it resyncs).
- Bounded work per loop turn: at most READS_PER_TURN reads and EVENTS_PER_TURN
  requests, then the timers and the replies get their turn; bytes are read only
  once the parser has handed out everything before them, so a flood waits in the
  pipe (its writer blocks), not in memory. Per client (per reply FIFO) at most
  `fiforeply.MAX_QUEUED_PER_REPLY` requests wait; log lines a client can cause
  are rate-limited (`fifoio.LogLimiter`: "... (N more like this)").
- Each request becomes a reply job (`fiforeply.ReplyJobs`): the command runs only
  once its reply FIFO is open; slow ones (flat_rotate) on a helper thread.
- Half a request idle for `request_idle_timeout` is abandoned (logged).
- If the server FIFO is deleted or renamed away, it is recreated at once
  (`fifoio.WatchedFifo`: pyinotify when it is installed, else an os.stat on
  every loop tick).
"""
import logging
import os
import selectors
import time

from kamflat.proto import mi
from kamflat.server.fifoio import ServerFifo, WatchedFifo
from kamflat.server.fiforeply import (REPLY_OPEN_WAIT, REPLY_WRITE_TIMEOUT, REQUEST_IDLE_TIMEOUT,
                                      ReplyJobs)
from kamflat.mgmt.manage import SLOW
from kamflat.mgmt.mi_commands import MICommands, Reply

log = logging.getLogger("kamflat.server.mi_fifo")

DEFAULT_MODULES = ("kex", "pv", "db_flatstore", "mi_fifo")


class MIFifoError(Exception):
    """The server FIFO could not be set up; the message names the path."""


class MIFifoServer:
    TICK = 0.05             # longest wait without checking stop_event / deadlines
    READ_SIZE = 65536
    READS_PER_TURN = 4
    EVENTS_PER_TURN = 256

    def __init__(self, fifo_name, fifo_mode=0o660, fifo_user=None, fifo_group=None,
                 reply_dir="/tmp/", reply_indent="\t", modules=DEFAULT_MODULES,
                 management=None, *, request_idle_timeout=REQUEST_IDLE_TIMEOUT,
                 reply_open_wait=REPLY_OPEN_WAIT, reply_write_timeout=REPLY_WRITE_TIMEOUT):
        self.fifo_name = fifo_name
        self.fifo = WatchedFifo(ServerFifo(fifo_name, fifo_mode, fifo_user, fifo_group),
                                log, "MI FIFO")
        self.reply_dir = reply_dir
        self.reply_indent = reply_indent
        self.request_idle_timeout = request_idle_timeout
        self.management = management
        self.commands = MICommands(modules, management)
        self.parser = mi.MIParser(self.commands.names, self.commands.no_input, reply_dir)
        self.jobs = ReplyJobs("MI FIFO", log, reply_open_wait=reply_open_wait,
                              reply_write_timeout=reply_write_timeout,
                              on_drop=lambda: self._count("dropped"))
        self.log = self.jobs.log    # one rate limit for every line a client can cause
        self._sel = None
        self._last_data = 0.0
        self._backlog = False       # the parser holds requests not handed out yet

    @property
    def watch(self):
        """How a deleted FIFO is noticed: "inotify" or "stat" (None before open())."""
        return self.fifo.watch

    # -- lifecycle --------------------------------------------------------------

    def open(self):
        """Create the FIFO (replacing whatever is at fifo_name) and get ready to serve."""
        try:
            os.stat(self.reply_dir)
        except OSError as e:
            raise MIFifoError("MI FIFO reply_dir %s: %s" % (self.reply_dir, e.strerror)) from None
        self._sel = selectors.DefaultSelector()
        self.jobs.open(self._sel)
        try:
            self.fifo.open(self._sel, self._on_request_bytes)
        except (OSError, KeyError) as e:
            self.close()
            raise MIFifoError("cannot create MI FIFO %s: %s"
                              % (self.fifo_name, getattr(e, "strerror", e))) from None
        stats = getattr(self.management, "statistics", None)
        if stats is not None:       # mi_fifo:requests / errors / dropped, for get_statistics
            for name in ("requests", "errors", "dropped"):
                stats.register("mi_fifo", name)
        log.info("MI FIFO listening on %s", self.fifo_name)

    def close(self):
        """Stop serving: finish slow commands, close everything, remove the FIFO."""
        self.jobs.close()
        if self._sel is not None:
            self.fifo.close()
            self._sel.close()
            self._sel = None

    def serve(self, stop_event):
        """Answer requests until stop_event is set (checked at least every TICK)."""
        while not stop_event.is_set():
            try:
                self.serve_once(self.TICK)
            except Exception:       # a bug must not take the MI server down with it
                log.exception("MI FIFO: unexpected error; serving on")

    def serve_once(self, timeout):
        """One loop turn: wait up to `timeout` s for IO, handle it, run the timers."""
        if self._backlog:
            self._take_events()     # the requests left over from the last turn first
        wait = 0.0 if self._backlog else self.jobs.next_timeout(timeout)
        for key, mask in self._sel.select(wait):
            key.data(key.fd, mask)
        self._on_tick(time.monotonic())

    # -- reading requests -------------------------------------------------------------

    def _on_request_bytes(self, fd, mask):
        """Read and handle what is there, within this turn's budget."""
        for _ in range(self.READS_PER_TURN):
            if self._backlog:
                return              # hand out what is parsed before reading more
            try:
                data = os.read(fd, self.READ_SIZE)
            except BlockingIOError:
                return
            if not data:
                return
            self._last_data = time.monotonic()
            self.parser.receive_data(data)
            self._take_events()

    def _take_events(self):
        for _ in range(self.EVENTS_PER_TURN):
            event = self.parser.next_event()
            if event is mi.NEED_DATA:
                self._backlog = False
                return
            self._on_event(event)
        self._backlog = True

    # -- requests -----------------------------------------------------------------

    def _on_event(self, event):
        if isinstance(event, mi.Request):
            self._submit(event.reply_name, event.command,
                         lambda: self._run(event.command, event.args),
                         slow=event.command in SLOW)
            return
        self._count("errors" if not isinstance(event, mi.ProtocolDrop) else "dropped")
        if isinstance(event, mi.UnknownCommand):
            self.log.error("MI FIFO: command %r is not available", event.command)
            reply = mi.command_not_available(event.command)
        elif isinstance(event, mi.ParseError):
            self.log.error("MI FIFO: parse error in command %r: %s", event.command, event.reason)
            reply = mi.parse_error_reply(event.command)
        else:
            self.log.warning("MI FIFO: dropped request %r: %s", event.logline, event.reason)
            return
        self._submit(event.reply_name, event.command, lambda: reply)

    def _submit(self, reply_name, command, run, slow=False):
        self.jobs.submit(self.reply_dir + reply_name, command, run, slow)

    def _run(self, command, args):
        """Run a command (its reply FIFO is open now): the reply bytes, or CloseThen."""
        self._count("requests")
        try:
            result = self.commands.run(command, args)
        except Exception:
            log.exception("MI FIFO: command %r failed", command)
            result = None
        if result is None:
            data = mi.command_failed(command)
        elif isinstance(result, Reply):
            data = mi.encode_reply(result.code, result.reason, result.nodes, self.reply_indent)
        elif isinstance(result, bytes):
            data = result
        else:
            return result           # MI kill: 0 bytes, then stop (fiforeply does it)
        if data[:1] != b"2":
            self._count("errors")
        return data

    # -- timers ------------------------------------------------------------------------

    def _on_tick(self, now):
        self.jobs.tick(now)
        if self.parser.pending and now - self._last_data > self.request_idle_timeout:
            self.parser.abandon("unfinished request abandoned after %.1f s without data"
                                % self.request_idle_timeout)
            self._take_events()
        self.fifo.tick()

    def _count(self, name):
        stats = getattr(self.management, "statistics", None)
        if stats is not None:
            stats.add("mi_fifo", name, 1)
