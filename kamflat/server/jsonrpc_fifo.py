"""The JSON-RPC FIFO server (Kamailio's jsonrpcs FIFO transport): IO around jsonrpc.py.

One non-blocking loop reads the server FIFO (opened O_RDWR so it never sees EOF),
cuts the stream into documents (`jsonrpc.FifoStream`) and turns each valid request
into a reply job. A job first opens the client's reply FIFO (O_WRONLY|O_NONBLOCK,
must be a FIFO, not a symlink, not hard-linked), retrying for up to
`reply_open_wait` seconds while no reader has it open yet (kamctl starts its `cat`
after writing the request). Only then does the command run, so a request whose
reply FIFO never opens does not run at all; a slow one (a rotation) runs on a
helper thread meanwhile. The reply is written without blocking;
a reader that stops reading is given up after `reply_write_timeout`. Jobs wait
side by side, so a slow or absent client never holds up another. If the server
FIFO is deleted or renamed away, it is recreated at once, as the MI FIFO's is
(`fifoio.WatchedFifo`; Kamailio's jsonrpcs creates it only at startup).
"""
import errno
import logging
import os
import selectors
import stat
import time

from kamflat.proto import jsonrpc
from kamflat.server.fifoio import (ReplyRefused, ServerFifo, SlowCalls, WatchedFifo, open_reply_fifo,
                            serve_until)
from kamflat.mgmt.manage import SLOW
from kamflat.mgmt.rpc_commands import Params, RpcCommands, RpcFault

log = logging.getLogger("kamflat.proto.jsonrpc")


def answer(request, commands, formatted=True):
    """Run one valid request. Returns (reply bytes, error line to log or None)."""
    ident = dict(id=request.id, has_id=request.has_id, formatted=formatted)
    if request.method is None:
        return jsonrpc.encode_reply(result={}, **ident), "missing jsonrpc method field in request"
    method = commands.lookup(request.method)
    if method is None:
        return (jsonrpc.encode_reply(error=jsonrpc.error_object(500, "Method Not Found"),
                                     **ident),
                "method callback not found [%s]" % request.method)
    try:
        reply = commands.call(method, Params(request.params, "json"))
    except RpcFault as fault:
        return jsonrpc.encode_reply(error=jsonrpc.error_object(fault.code, fault.message),
                                    **ident), None
    except Exception as exc:    # a bug in a command must not take the server down
        log.exception("jsonrpc: %s failed", request.method)
        return (jsonrpc.encode_reply(error=jsonrpc.error_object(500, "Internal Server Error: %s"
                                                                % exc), **ident), None)
    return jsonrpc.encode_reply(result=reply.json_result(), **ident), None


class ReplyJob:
    """One reply on its way to /reply_dir/reply_name."""

    def __init__(self, path, run, started, slow=False):
        self.path = path
        self.run = run            # () -> bytes: runs the command once the FIFO is open
        self.slow = slow          # run it on the helper thread
        self.started = started
        self.fd = None
        self.data = None          # the reply, once the command has run
        self.give_up_at = None


class JsonRpcFifoServer:
    """jsonrpcs' FIFO transport: `open()`, `serve(stop_event)`, `close()`."""

    READS_PER_TURN = 16     # then timers and replies get their turn (a flood cannot starve them)

    def __init__(self, fifo_name, fifo_mode=0o660, fifo_user=None, fifo_group=None,
                 reply_dir="/tmp/", management=None, *, pretty_format=1, idle_timeout=1.0,
                 reply_open_wait=0.4, reply_write_timeout=2.0):
        self.fifo_name = fifo_name
        # a pipe larger than any valid document (8190 bytes and leftover blanks): a read
        # boundary inside one document written at once never falls where stream rule 4 looks
        self.fifo = WatchedFifo(ServerFifo(fifo_name, 0o660 if fifo_mode is None else fifo_mode,
                                           fifo_user, fifo_group, pipe_size=16384),
                                log, "jsonrpcs FIFO")
        self.reply_dir = reply_dir or "/tmp/"
        self.formatted = pretty_format != 0
        self.commands = RpcCommands(management)
        self.idle_timeout = idle_timeout
        self.reply_open_wait = reply_open_wait
        self.reply_write_timeout = reply_write_timeout
        self._stream = jsonrpc.FifoStream()
        self._last_rx = time.monotonic()
        self._jobs = []
        self._selector = None
        self._slow = None

    # -- lifecycle

    def open(self):
        """Create the server FIFO and open it. Raises OSError naming the path."""
        path = self.fifo_name
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISFIFO(st.st_mode):
            raise OSError(errno.EEXIST, "jsonrpcs fifo_name %s exists and is not a FIFO" % path)
        self._selector = selectors.DefaultSelector()
        try:
            # a stale FIFO of a previous run is replaced, as Kamailio does
            self.fifo.open(self._selector, self._on_request_bytes)
        except (OSError, KeyError) as exc:
            self._selector.close()
            self._selector = None
            raise OSError("cannot create jsonrpcs FIFO %s: %s" % (path, exc)) from exc
        self._slow = SlowCalls("jsonrpc-slow")
        self._selector.register(self._slow.wake_fd, selectors.EVENT_READ, self._on_slow_done)

    def close(self):
        """Stop serving: close every descriptor and remove the server FIFO."""
        if self._slow is not None:
            self._slow.close()      # waits for a running rotation; its reply is dropped
            self._slow = None
        for job in self._jobs:
            self._close_job(job)
        self._jobs = []
        if self._selector is not None:
            self.fifo.close()
            self._selector.close()
            self._selector = None

    def serve(self, stop_event):
        """Answer requests until `stop_event` is set (checked at least every 50 ms)."""
        serve_until(stop_event, self.serve_once, log)

    def serve_once(self, timeout):
        """One turn of the loop: wait up to `timeout` s for IO, then do what is due."""
        for key, mask in self._selector.select(self._wait_time(timeout)):
            key.data(key.fd, mask)
        self._check_idle()
        self._advance_jobs()
        self.fifo.tick()

    # -- reading

    def _on_request_bytes(self, fd, mask):
        # each chunk goes to the stream as it was read, and its events are taken before
        # the next read: a chunk that starts a new write is a resynchronisation point
        for _ in range(self.READS_PER_TURN):
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return
            if not data:
                return
            self._last_rx = time.monotonic()
            self._stream.receive_data(data)
            self._take_events()

    def _take_events(self):
        while (event := self._stream.next_event()) is not jsonrpc.NEED_DATA:
            if isinstance(event, jsonrpc.Document):
                self._on_document(event.data)
            else:
                self._on_rejected(event)

    def _check_idle(self):
        if self._stream.pending and time.monotonic() - self._last_rx > self.idle_timeout:
            self._stream.abandon()
            self._take_events()

    def _on_document(self, data):
        request = jsonrpc.parse_request(data, self.reply_dir)
        if isinstance(request, jsonrpc.Invalid):
            log.error("jsonrpc fifo: %s: %s", request.reason, _excerpt(data))
            if request.error is not None:
                self._error_job(request.reply_name, request.error, request.id, request.has_id)
            return

        def run():
            reply, problem = answer(request, self.commands, self.formatted)
            if problem:
                log.error("jsonrpc fifo: %s", problem)
            return reply

        self._add_job(request.reply_name, run, slow=request.method in SLOW)

    def _on_rejected(self, event):
        log.error("jsonrpc fifo: %s: %s", event.reason, _excerpt(event.head))
        self._error_job(event.reply_name, (event.code, None), event.id, event.has_id)

    def _error_job(self, reply_name, error, ident, has_id):
        """Tell a client its document was refused, if it said where to reply."""
        if not isinstance(reply_name, str) or not reply_name:
            return
        if jsonrpc.check_reply_name(reply_name, self.reply_dir):
            return
        reply = jsonrpc.encode_reply(error=jsonrpc.error_object(*error),
                                     id=jsonrpc.reply_id(ident), has_id=has_id,
                                     formatted=self.formatted)
        self._add_job(reply_name, lambda: reply)

    # -- replying

    def _add_job(self, reply_name, run, slow=False):
        self._jobs.append(ReplyJob(os.path.join(self.reply_dir, reply_name), run,
                                   time.monotonic(), slow))

    def _wait_time(self, timeout):
        if self._jobs:
            return min(timeout, 0.01)     # a reply FIFO to open or write soon
        return timeout

    def _advance_jobs(self):
        busy = set()                      # replies to one FIFO go out one after another
        for job in list(self._jobs):
            if job.path in busy:
                continue
            if job.fd is None:
                self._open_reply(job)
            if job.data is not None:
                self._write_reply(job)
            if job in self._jobs:
                busy.add(job.path)

    def _open_reply(self, job):
        """Try to open the job's reply FIFO; once it is open, run the command (a slow
        one on the helper thread). If it cannot be opened yet the job stays, to be
        retried; if it must not be, the job is dropped."""
        try:
            fd = open_reply_fifo(job.path)
        except ReplyRefused as refused:
            self._drop(job, str(refused))
            return
        if fd is None:                    # no reader yet
            if time.monotonic() - job.started >= self.reply_open_wait:
                self._drop(job, "no client at %s" % job.path)
            return
        job.fd = fd
        if job.slow:
            self._slow.submit(job, job.run)
        else:
            self._set_reply(job, job.run())

    def _on_slow_done(self, fd, mask):
        for job, reply in self._slow.finished():
            if job in self._jobs:
                self._set_reply(job, reply if reply is not None else b"")

    def _set_reply(self, job, reply):
        job.data = reply
        job.give_up_at = time.monotonic() + self.reply_write_timeout

    def _write_reply(self, job):
        while job.data:
            try:
                n = os.write(job.fd, job.data)
            except BlockingIOError:
                if time.monotonic() > job.give_up_at:
                    self._drop(job, "reply to %s not read in %.1fs, given up"
                               % (job.path, self.reply_write_timeout))
                return
            except OSError as exc:
                self._drop(job, "failed to write the reply to %s: %s" % (job.path, exc.strerror))
                return
            job.data = job.data[n:]
        self._close_job(job)
        self._jobs.remove(job)

    def _drop(self, job, why):
        log.error("jsonrpc fifo: cannot reply: %s", why)
        self._close_job(job)
        self._jobs.remove(job)

    @staticmethod
    def _close_job(job):
        if job.fd is not None:
            os.close(job.fd)
            job.fd = None


def _excerpt(data, limit=120):
    text = data[:limit].decode("utf-8", "replace")
    return repr(text) + ("..." if len(data) > limit else "")
