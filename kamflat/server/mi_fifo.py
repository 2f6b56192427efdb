"""The classic MI FIFO server: Kamailio 3.3's mi_fifo, without its stalls.

IO only: the grammar and reply framing are in `mi.py`, the commands in
`mi_commands.py`. One thread runs `serve()`, a non-blocking event loop:

- The server FIFO is held open O_RDWR|O_NONBLOCK, so writers coming and going
  never cause EOF churn. Every byte read goes through one `MIParser` (the FIFO is
  one stream shared by all clients; `mi.py` explains how it resyncs).
- Each request becomes a `ReplyJob`. Its reply FIFO (reply_dir + name) must be
  a FIFO, not a symlink, not hard-linked (checked with lstat before opening
  with O_NOFOLLOW, then compared with fstat). A FIFO nobody reads yet (ENXIO)
  is retried every few ms for RETRY_WINDOW (Kamailio: 5 tries 80 ms apart),
  while other requests go on being served; then the request is dropped.
- The command runs only once its reply FIFO is open. Slow commands (flat_rotate
  waits for the writers) run on a helper thread, so they hold up nobody.
- Replies are written non-blocking; what the reader has not taken yet waits
  in the job until it drains, or until `reply_timeout`.
- Half a request idle for `request_timeout` is abandoned (logged).
- If the server FIFO is deleted or renamed away, it is recreated at once
  (`fifoio.WatchedFifo`: pyinotify when it is installed, else an os.stat on
  every loop tick).
"""
import logging
import os
import selectors
import time

from kamflat.proto import mi
from kamflat.server.fifoio import ReplyRefused, ServerFifo, SlowCalls, WatchedFifo, open_reply_fifo
from kamflat.mgmt.mi_commands import SLOW, CloseThen, MICommands, Reply

log = logging.getLogger("kamflat.server.mi_fifo")

DEFAULT_MODULES = ("kex", "pv", "db_flatstore", "mi_fifo")


class MIFifoError(Exception):
    """The server FIFO could not be set up; the message names the path."""


class ReplyJob:
    """One request on its way to its reply FIFO."""

    __slots__ = ("path", "command", "args", "data", "fd", "give_up", "next_try", "offset")

    def __init__(self, path, command, args=None, data=None):
        self.path = path
        self.command = command
        self.args = args            # run the command with these once open (None: data is ready)
        self.data = data            # reply bytes
        self.fd = None
        self.give_up = self.next_try = 0.0
        self.offset = 0


class MIFifoServer:
    TICK = 0.05             # longest wait without checking stop_event / deadlines
    RETRY_WINDOW = 0.4      # how long a reply FIFO may have no reader yet
    RETRY_INTERVAL = 0.004
    READ_SIZE = 65536

    def __init__(self, fifo_name, fifo_mode=0o660, fifo_user=None, fifo_group=None,
                 reply_dir="/tmp/", reply_indent="\t", modules=DEFAULT_MODULES,
                 management=None, request_timeout=5.0, reply_timeout=5.0):
        self.fifo_name = fifo_name
        self.fifo = WatchedFifo(ServerFifo(fifo_name, fifo_mode, fifo_user, fifo_group),
                                log, "MI FIFO")
        self.reply_dir = reply_dir
        self.reply_indent = reply_indent
        self.request_timeout = request_timeout
        self.reply_timeout = reply_timeout
        self.management = management
        self.commands = MICommands(modules, management)
        self.parser = mi.MIParser(self.commands.names, self.commands.no_input, reply_dir)
        self._sel = None
        self._last_data = 0.0
        self._opening = []          # jobs whose reply FIFO has no reader yet
        self._writing = {}          # fd -> (job, give-up time)
        self._slow = None           # SLOW commands run on its helper thread

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
        self._slow = SlowCalls("mi-slow")
        self._sel.register(self._slow.wake_fd, selectors.EVENT_READ, self._on_wake)
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
        if self._slow is not None:
            # finished after the loop stopped: nobody will write them now
            for job, _ in self._slow.close():
                self._finish(job, "server shutting down")
            self._slow = None
        for job in list(self._opening):
            self._drop(job, "server shutting down")
        for fd, (job, _) in list(self._writing.items()):
            self._finish(job, "server shutting down before the reply was read")
        if self._sel is not None:
            self.fifo.close()
            self._sel.close()
            self._sel = None

    def serve(self, stop_event):
        """Answer requests until stop_event is set (checked at least every TICK)."""
        while not stop_event.is_set():
            try:
                for key, mask in self._sel.select(self._next_timeout()):
                    key.data(key.fd, mask)
                self._on_tick(time.monotonic())
            except Exception:       # a bug must not take the MI server down with it
                log.exception("MI FIFO: unexpected error; serving on")

    # -- reading requests -------------------------------------------------------------

    def _read_all(self, fd, most=64):
        """Read and handle what is there (at most `most` reads, so timers still run)."""
        for _ in range(most):
            try:
                data = os.read(fd, self.READ_SIZE)
            except BlockingIOError:
                return
            if not data:
                return
            self._last_data = time.monotonic()
            self.parser.feed(data)
            while (event := self.parser.next_event()) is not mi.NEED_DATA:
                self._on_event(event)

    def _on_request_bytes(self, fd, mask):
        self._read_all(fd)

    # -- requests -----------------------------------------------------------------

    def _on_event(self, event):
        path_of = lambda name: self.reply_dir + name
        if isinstance(event, mi.Request):
            self._start(ReplyJob(path_of(event.reply_name), event.command, args=event.args))
        elif isinstance(event, mi.UnknownCommand):
            log.error("MI FIFO: command %r is not available", event.command)
            self._count("errors")
            self._start(ReplyJob(path_of(event.reply_name), event.command,
                                 data=mi.command_not_available(event.command)))
        elif isinstance(event, mi.ParseError):
            log.error("MI FIFO: parse error in command %r: %s", event.command, event.reason)
            self._count("errors")
            self._start(ReplyJob(path_of(event.reply_name), event.command,
                                 data=mi.parse_error_reply(event.command)))
        else:
            self._count("dropped")
            log.warning("MI FIFO: dropped request %r: %s", event.logline, event.reason)

    def _start(self, job):
        now = time.monotonic()
        job.give_up = now + self.RETRY_WINDOW
        job.next_try = now
        self._try_open(job, now)

    def _try_open(self, job, now):
        try:
            job.fd = open_reply_fifo(job.path)
        except ReplyRefused as e:
            self._drop(job, str(e))
            return
        if job.fd is None:
            if now >= job.give_up:
                self._drop(job, "no client at %s (nobody opened it for reading within %.0f ms)"
                           % (job.path, self.RETRY_WINDOW * 1000))
            else:
                job.next_try = now + self.RETRY_INTERVAL
                if job not in self._opening:
                    self._opening.append(job)
            return
        if job in self._opening:
            self._opening.remove(job)
        self._run(job)

    def _drop(self, job, reason):
        if job in self._opening:
            self._opening.remove(job)
        self._count("dropped")
        log.warning("MI FIFO: dropped request %r (reply to %s): %s", job.command, job.path, reason)

    def _run(self, job):
        """The reply FIFO is open: run the command (maybe on the helper thread), then reply."""
        if job.args is None:
            self._write(job)
            return
        self._count("requests")
        if job.command in SLOW:
            self._slow.submit(job, lambda: self._call(job))
            return
        self._reply(job, self._call(job))

    def _call(self, job):
        try:
            return self.commands.run(job.command, job.args)
        except Exception:
            log.exception("MI FIFO: command %r failed", job.command)
            return None

    def _on_wake(self, fd, mask):
        for job, result in self._slow.finished():
            self._reply(job, result)

    def _reply(self, job, result):
        """Turn a command's result into bytes and start writing them."""
        if isinstance(result, CloseThen):       # MI kill: 0 bytes, then stop
            os.close(job.fd)
            job.fd = None
            result.action()
            return
        if result is None:
            job.data = mi.command_failed(job.command)
        elif isinstance(result, Reply):
            job.data = mi.encode_reply(result.code, result.reason, result.nodes, self.reply_indent)
        else:
            job.data = result       # bytes
        if job.data[:1] != b"2":
            self._count("errors")
        self._write(job)

    # -- replies ---------------------------------------------------------------------

    def _write(self, job):
        try:
            while job.offset < len(job.data):
                job.offset += os.write(job.fd, job.data[job.offset:])
        except BlockingIOError:
            if job.fd not in self._writing:
                self._writing[job.fd] = (job, time.monotonic() + self.reply_timeout)
                self._sel.register(job.fd, selectors.EVENT_WRITE, self._on_writable)
            return
        except OSError as e:
            self._finish(job, "reader of %s went away before the reply was written (%s)"
                         % (job.path, e.strerror))
            return
        self._finish(job)

    def _on_writable(self, fd, mask):
        self._write(self._writing[fd][0])

    def _finish(self, job, problem=None):
        if problem:
            log.warning("MI FIFO: reply to %r for %r not delivered: %s", job.path, job.command, problem)
        if job.fd in self._writing:
            del self._writing[job.fd]
            self._sel.unregister(job.fd)
        os.close(job.fd)
        job.fd = None

    # -- timers ------------------------------------------------------------------------

    def _next_timeout(self):
        if not self._opening:
            return self.TICK
        soonest = min(job.next_try for job in self._opening)
        return max(0.0, min(self.TICK, soonest - time.monotonic()))

    def _on_tick(self, now):
        for job in [j for j in self._opening if j.next_try <= now]:
            self._try_open(job, now)
        for job, give_up in [v for v in self._writing.values() if v[1] <= now]:
            self._finish(job, "the reader did not read it within %.1f s" % self.reply_timeout)
        if self.parser.pending and now - self._last_data > self.request_timeout:
            for event in self.parser.abandon("unfinished request abandoned after %.1f s without data"
                                             % self.request_timeout):
                self._on_event(event)
        self.fifo.tick()

    def _count(self, name):
        stats = getattr(self.management, "statistics", None)
        if stats is not None:
            stats.add("mi_fifo", name, 1)

